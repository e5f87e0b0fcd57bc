#!/usr/bin/env python3
"""gen_model_ref.py - tiny random Qwen3 checkpoints and Hugging Face's logits.

Writes tests/fixtures/ref/models/<name>/ (config.json, safetensors, and
reference.json with fp32 logits from transformers' Qwen3ForCausalLM), which
the C tests read: test_model checks the loader against them and the CPU
engine's tests compare their forward pass with the logits. Needs torch,
transformers (5.x), safetensors and numpy; no network. Runs on the CPU in
fp32 with eager attention, so the logits do not depend on the GPU.

    python3 tests/gen_model_ref.py --out tests/fixtures/ref/models

reference.json:
  {"vocab": V, "cases": [{"ids": [...], "logits_file": "logits_0.f32",
    "greedy": [N ids], "max_abs_logit": x, "min_top2_gap": g}],
   "inv_freq": [...], "attention_scaling": a, ...}
logits_K.f32 is float32 little-endian [len(ids)][V]; greedy is the argmax
continuation (full forward each step, no cache). min_top2_gap is the
smallest top-1 minus top-2 logit over the prompt's last position and every
greedy step: prompts are re-drawn until it is comfortably above fp32 noise.

The AWQ model (awq_g128) holds weights quantized here to 4 bits (group 128,
zero point) and packed as src/model.h describes; its logits come from the
DEQUANTIZED weights in fp32, so a C forward pass that matches them has
both the dequantization and the forward right.
"""
import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile

import numpy as np
import torch
import safetensors
from safetensors.torch import save_file

import transformers
from transformers import AutoConfig, Qwen3ForCausalLM

N_GREEDY = 8
MIN_GAP = 2e-3
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # AutoAWQ's unpacking order


def base_config(**kw):
    """A config.json in the form real Qwen3 checkpoints use."""
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "initializer_range": 0.1,
        "max_position_embeddings": 256,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
    }
    cfg.update(kw)
    return cfg


MODELS = [
    dict(name="bf16_untied_gqa",
         desc="bf16, untied lm_head, GQA 4:2, head_dim 32 with hidden 96",
         config=base_config(vocab_size=1000, hidden_size=96, intermediate_size=192,
                            num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=32),
         prompt_lens=[1, 6, 23], seed=1),
    dict(name="bf16_tied_gqa8",
         desc="bf16, tied embeddings, GQA 8:1, head_dim 16 with hidden 64",
         config=base_config(vocab_size=512, hidden_size=64, intermediate_size=160,
                            num_hidden_layers=3, num_attention_heads=8,
                            num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                            rope_theta=10000.0),
         prompt_lens=[5, 17], seed=2),
    dict(name="yarn",
         desc="YaRN factor 4, original_max_position_embeddings 32, prompts past 32",
         config=base_config(vocab_size=512, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=32, rope_theta=10000.0,
                            max_position_embeddings=128,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                          "original_max_position_embeddings": 32}),
         prompt_lens=[40, 61], seed=3),
    dict(name="awq_g128",
         desc="AWQ 4-bit group 128 (GEMM packing), fp16, head_dim 64 with hidden 128",
         config=base_config(vocab_size=512, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, torch_dtype="float16",
                            quantization_config={"bits": 4, "group_size": 128,
                                                 "modules_to_not_convert": None,
                                                 "quant_method": "awq", "version": "gemm",
                                                 "zero_point": True}),
         prompt_lens=[9, 30], seed=4, awq=True),
    # The CUDA kernels take head_dim 64 or 128 (every Qwen3 model uses 128):
    # these run the same checks on shapes both engines accept.
    dict(name="gpu_bf16_untied_d128",
         desc="bf16, untied, GQA 2:1, head_dim 128 with hidden 128 (heads x head_dim 256)",
         config=base_config(vocab_size=1000, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=128),
         prompt_lens=[7, 33], seed=6),
    dict(name="gpu_bf16_tied_yarn_d64",
         desc="bf16, tied, GQA 4:2, head_dim 64 with hidden 96, YaRN factor 4 over 32",
         config=base_config(vocab_size=512, hidden_size=96, intermediate_size=192,
                            num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                            rope_theta=10000.0, max_position_embeddings=128,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                          "original_max_position_embeddings": 32}),
         prompt_lens=[40, 70], seed=7),
    dict(name="sharded",
         desc="2 shards + model.safetensors.index.json; transformers-5 config form "
              "(dtype, rope_parameters), eos list",
         config=None, prompt_lens=[12], seed=5, shards=2),
]


def sharded_config():
    cfg = base_config(vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=24, eos_token_id=[151645, 151643])
    del cfg["torch_dtype"], cfg["rope_theta"], cfg["rope_scaling"]
    cfg["dtype"] = "bfloat16"
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    cfg["transformers_version"] = transformers.__version__
    return cfg


def hf_config_from_dict(d):
    """Lets transformers parse the dict exactly as it would parse config.json."""
    tmp = tempfile.mkdtemp()
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(d, f)
        cfg = AutoConfig.from_pretrained(tmp)
    finally:
        shutil.rmtree(tmp)
    return cfg


def set_eager(cfg):
    for attempt in ("_attn_implementation", "attn_implementation"):
        try:
            setattr(cfg, attempt, "eager")
            return
        except Exception:
            pass


def build_model(cfg_dict, seed):
    hf_dict = {k: v for k, v in cfg_dict.items() if k != "quantization_config"}
    cfg = hf_config_from_dict(hf_dict)
    set_eager(cfg)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    if next(model.parameters()).dtype != torch.float32 or \
            model.model.rotary_emb.inv_freq.dtype != torch.float32:
        # built in the config's dtype: go to fp32 and recompute the RoPE table
        model.float()
        model.model.rotary_emb = type(model.model.rotary_emb)(cfg)
    # Our own init, independent of transformers' init code: normal weights
    # with std initializer_range, norm weights near 1 but not equal (so a
    # forward pass that ignores them is caught).
    gen = torch.Generator().manual_seed(seed)
    std = cfg_dict["initializer_range"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
        if cfg_dict.get("tie_word_embeddings"):
            emb, head = model.model.embed_tokens.weight, model.lm_head.weight
            if head.data_ptr() != emb.data_ptr():
                print("  note: lm_head not tied in memory; copying the embedding into it")
                head.copy_(emb)
    model.eval()
    return model, cfg


# ---- AWQ ----------------------------------------------------------------------

def awq_quantize(w, group):
    """w: torch fp32 [out, in] (nn.Linear layout). Returns (q [in,out] int,
    zeros [in/g,out] int, scales fp16 [in/g,out]) with w ~ (q - z) * s."""
    wt = w.t().contiguous().double().numpy()  # [in, out]
    n_in, n_out = wt.shape
    assert n_in % group == 0 and n_out % 8 == 0
    g = wt.reshape(n_in // group, group, n_out)
    wmin = np.minimum(g.min(axis=1), 0.0)
    wmax = np.maximum(g.max(axis=1), 0.0)
    scales = ((wmax - wmin) / 15.0).clip(min=1e-5).astype(np.float16)
    s = scales.astype(np.float64)
    zeros = np.clip(np.round(-wmin / s), 0, 15).astype(np.int64)
    q = np.clip(np.round(g / s[:, None, :]) + zeros[:, None, :], 0, 15).astype(np.int64)
    return q.reshape(n_in, n_out), zeros, scales


def awq_pack(vals):
    """vals int [rows, out] in 0..15 -> int32 [rows, out/8], per src/model.h:
    nibble i of word c holds column 8c + AWQ_ORDER[i]."""
    rows, n_out = vals.shape
    packed = np.zeros((rows, n_out // 8), dtype=np.uint32)
    for i in range(8):
        packed |= (vals[:, AWQ_ORDER[i]::8].astype(np.uint32) << np.uint32(4 * i))
    return packed.view(np.int32)


def awq_unpack_autoawq(packed):
    """AutoAWQ's unpack_awq + reverse_awq_order, written independently of awq_pack."""
    t = torch.from_numpy(packed.astype(np.int32))
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    iw = torch.bitwise_right_shift(t[:, :, None], shifts[None, None, :]).to(torch.int8)
    iw = iw.view(iw.shape[0], -1)
    iw = iw.view(-1, 8)[:, AWQ_REVERSE_ORDER].view(t.shape[0], -1)
    return torch.bitwise_and(iw, 0xF).to(torch.int64).numpy()


def awq_dequant(qweight, qzeros, scales, group):
    q = awq_unpack_autoawq(qweight)
    z = awq_unpack_autoawq(qzeros)
    n_in = q.shape[0]
    zz = np.repeat(z, group, axis=0)[:n_in]
    ss = np.repeat(scales.astype(np.float32), group, axis=0)[:n_in]
    w = (q - zz).astype(np.float32) * ss  # [in, out], exact in fp32
    return torch.from_numpy(np.ascontiguousarray(w.T))  # [out, in]


LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_awq_state(model, group):
    """Quantizes every linear layer in place (the model then holds the
    dequantized weights) and returns the AWQ state dict to save."""
    state = {}
    checked = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            prefix = name[: -len(".weight")] if name.endswith(".weight") else None
            if prefix and prefix.endswith(LINEARS):
                q, z, s = awq_quantize(p.detach().float(), group)
                qweight, qzeros = awq_pack(q), awq_pack(z)
                w = awq_dequant(qweight, qzeros, s, group)
                # round trip: unpacking what we packed gives back q and z
                assert np.array_equal(awq_unpack_autoawq(qweight), q), name
                assert np.array_equal(awq_unpack_autoawq(qzeros), z), name
                # and the dequantized weight is a 4-bit approximation of the original
                err = (w - p.detach().float()).abs().max().item()
                assert err <= float(s.astype(np.float32).max()) * 1.01 + 1e-6, (name, err)
                p.copy_(w)
                state[prefix + ".qweight"] = torch.from_numpy(qweight.copy())
                state[prefix + ".qzeros"] = torch.from_numpy(qzeros.copy())
                state[prefix + ".scales"] = torch.from_numpy(s.copy())
                checked += 1
            else:
                h = p.detach().to(torch.float16).contiguous().clone()
                p.copy_(h.float())
                state[name] = h
    print(f"  awq: {checked} linear layers quantized, round trip checked")
    return state


# ---- reference ------------------------------------------------------------------

@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


def top2_gap(row):
    v = torch.topk(row, 2).values
    return float(v[0] - v[1])


@torch.no_grad()
def make_case(model, vocab, n_ids, rng):
    for _attempt in range(50):
        ids = [int(x) for x in rng.integers(0, vocab, size=n_ids)]
        logits = logits_of(model, ids)
        gaps = [top2_gap(logits[-1])]
        seq = list(ids)
        greedy = []
        row = logits[-1]
        for _ in range(N_GREEDY):
            nxt = int(torch.argmax(row))
            greedy.append(nxt)
            seq.append(nxt)
            row = logits_of(model, seq)[-1]
            gaps.append(top2_gap(row))
        gaps = gaps[:N_GREEDY]  # the gaps that decided each greedy id
        if min(gaps) >= MIN_GAP:
            return ids, logits, greedy, min(gaps)
    raise SystemExit("could not find a prompt with well separated logits")


def save_state(state, out_dir, n_shards):
    if n_shards <= 1:
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(state.keys())
    per = math.ceil(len(names) / n_shards)
    weight_map, total = {}, 0
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: state[n] for n in names[k * per:(k + 1) * per]}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def reload_check(out_dir, cases, cache):
    """Loads the written folder back with from_pretrained (as a user would)
    and checks it gives the same logits: our config.json and weights mean
    to transformers what the in-memory model meant."""
    try:
        try:
            m = Qwen3ForCausalLM.from_pretrained(out_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
        except TypeError:
            m = Qwen3ForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
        m.eval()
        worst = 0.0
        for case, logits in zip(cases, cache):
            got = logits_of(m, case["ids"])
            worst = max(worst, float((got - logits).abs().max()))
        return {"ok": worst < 1e-4, "max_abs_diff": worst}
    except Exception as e:  # reported, not fatal: the manifest says what happened
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def generate(spec, root):
    name = spec["name"]
    cfg = spec["config"] if spec["config"] is not None else sharded_config()
    out_dir = os.path.join(root, name)
    os.makedirs(out_dir, exist_ok=True)
    print(f"{name}: {spec['desc']}")
    model, hf_cfg = build_model(cfg, spec["seed"])
    if spec.get("awq"):
        state = make_awq_state(model, cfg["quantization_config"]["group_size"])
    else:
        # Round the parameters to bf16 one by one; model.to(bfloat16) would
        # also round the rotary inv_freq buffer and skew the reference.
        state = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                b = p.detach().to(torch.bfloat16).contiguous().clone()
                state[n] = b
                p.copy_(b.float())
        if cfg.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)
    state = {n: t for n, t in state.items() if "rotary_emb" not in n}
    save_state(state, out_dir, spec.get("shards", 1))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    vocab = cfg["vocab_size"]
    rng = np.random.default_rng(1000 + spec["seed"])
    cases, cache = [], []
    for k, n in enumerate(spec["prompt_lens"]):
        ids, logits, greedy, gap = make_case(model, vocab, n, rng)
        fname = f"logits_{k}.f32"
        logits.numpy().astype("<f4").tofile(os.path.join(out_dir, fname))
        cases.append({"ids": ids, "logits_file": fname, "greedy": greedy,
                      "max_abs_logit": float(logits.abs().max()), "min_top2_gap": gap})
        cache.append(logits)
        print(f"  case {k}: {n} ids, greedy {greedy}, max|logit| "
              f"{cases[-1]['max_abs_logit']:.3f}, min gap {gap:.4f}")
    rot = model.model.rotary_emb
    ref = {"name": name, "description": spec["desc"], "vocab": vocab, "cases": cases,
           "inv_freq": [float(x) for x in rot.inv_freq.float()],
           "attention_scaling": float(rot.attention_scaling),
           "attn_implementation": str(getattr(hf_cfg, "_attn_implementation", None))}
    if spec.get("awq"):
        ref["note"] = "logits from the dequantized weights in fp32"
        check = {"ok": None, "note": "not reloaded: needs an AWQ kernel package"}
    else:
        check = reload_check(out_dir, cases, cache)
    ref["reload_check"] = check
    print(f"  reload check: {check}")
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    return {"name": name, "description": spec["desc"], "reload_check": check}


# ---- RoPE probes ----------------------------------------------------------------

def rope_probes():
    """inv_freq and attention_scaling as transformers computes them for a few
    configs, to pin model_rope_inv_freq to HF's exact rules (factor versus
    max_position_embeddings / original, beta defaults, truncate, ...)."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    def qcfg(**kw):
        c = base_config(vocab_size=151936, hidden_size=5120, intermediate_size=17408,
                        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8,
                        head_dim=128, max_position_embeddings=40960)
        c.update(kw)
        return c

    probes = [
        ("qwen3_14b_default", qcfg()),
        ("qwen3_14b_yarn_maxpos40960", qcfg(rope_scaling={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})),
        ("qwen3_14b_yarn_maxpos131072", qcfg(max_position_embeddings=131072, rope_scaling={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})),
        ("yarn_type_key_betas", qcfg(head_dim=64, rope_theta=10000.0,
                                      max_position_embeddings=4096, rope_scaling={
            "type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
            "beta_fast": 16, "beta_slow": 2})),
        ("yarn_no_original", qcfg(head_dim=64, rope_theta=10000.0,
                                   max_position_embeddings=4096, rope_scaling={
            "rope_type": "yarn", "factor": 2.0})),
        ("yarn_rope_parameters_truncate_false", {**{k: v for k, v in qcfg().items()
                                                     if k not in ("rope_theta", "rope_scaling")},
            "max_position_embeddings": 65536,
            "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0,
                                "original_max_position_embeddings": 8192, "truncate": False,
                                "attention_factor": 1.5}}),
        ("yarn_mscale", qcfg(head_dim=64, rope_theta=10000.0, max_position_embeddings=163840,
                              rope_scaling={"rope_type": "yarn", "factor": 40.0,
                                            "original_max_position_embeddings": 4096,
                                            "mscale": 1.0, "mscale_all_dim": 0.5})),
    ]
    out = []
    for name, c in probes:
        entry = {"name": name, "config": c}
        try:
            rot = Qwen3RotaryEmbedding(hf_config_from_dict(c))
            entry["inv_freq"] = [float(x) for x in rot.inv_freq.float()]
            entry["attention_scaling"] = float(rot.attention_scaling)
            print(f"probe {name}: attention_scaling {entry['attention_scaling']:.6f}, "
                  f"inv_freq[1] {entry['inv_freq'][1]:.6g}, inv_freq[-1] {entry['inv_freq'][-1]:.6g}")
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            print(f"probe {name}: error {entry['error']}")
        out.append(entry)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the model folders")
    ap.add_argument("--only", help="generate just this model")
    args = ap.parse_args()
    torch.set_num_threads(4)
    os.makedirs(args.out, exist_ok=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                "numpy": np.__version__}
    print(versions)
    models = []
    for spec in MODELS:
        if args.only and spec["name"] != args.only:
            continue
        models.append(generate(spec, args.out))
    probes = rope_probes()
    with open(os.path.join(args.out, "rope_probes.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "probes": probes}, f, indent=1)
    manifest = {"generator": "tests/gen_model_ref.py", "versions": versions, "models": models,
                "n_greedy": N_GREEDY, "min_top2_gap": MIN_GAP,
                "logits": "float32 little-endian [len(ids)][vocab], fp32 eager attention on CPU"}
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    bad = [m["name"] for m in models if m["reload_check"].get("ok") is False]
    if bad:
        print(f"WARNING: reload check failed for {bad}", file=sys.stderr)


if __name__ == "__main__":
    main()
