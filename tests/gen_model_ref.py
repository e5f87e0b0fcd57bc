#!/usr/bin/env python3
"""gen_model_ref.py - tiny random Qwen3 checkpoints with Hugging Face's logits.

Runs where torch and transformers are installed (the GPU machine; the work is
small enough for its CPU, which keeps it deterministic):
    python3 tests/gen_model_ref.py --out DIR
For each model below it writes DIR/<name>/: config.json in the form real
Qwen3 checkpoints use (rope_theta + rope_scaling, torch_dtype, and for AWQ
quantization_config), the weights (model.safetensors, or two shards with
model.safetensors.index.json), and reference.json:
    {"vocab": V, "cases": [{"ids": [...], "logits_file": "logits_0.f32",
      "greedy": [8 ids], "max_abs_logit": x}], "inv_freq": [...],
      "attention_scaling": x}
with logits float32 little endian [positions][vocab] from transformers'
Qwen3ForCausalLM in fp32 on exactly the stored weights (bf16/fp16 values,
and for AWQ the dequantized int4 weights), so a correct fp32 engine matches
to rounding. tests/test_cpu_ref.c reads them.
"""
import argparse, json, math, os, sys

import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

MODELS = [
    # name, config, dtype, prompt lengths, options
    ("bf16_untied", dict(vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         tie_word_embeddings=False), "bfloat16", [7, 20], {}),
    ("bf16_tied_gqa8", dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1,
                            head_dim=16, tie_word_embeddings=True), "bfloat16", [5, 17], {}),
    ("bf16_yarn", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       tie_word_embeddings=False, max_position_embeddings=128),
     "bfloat16", [48, 90], {"yarn": dict(factor=4.0, original_max_position_embeddings=32)}),
    ("awq", dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 tie_word_embeddings=False), "float16", [9, 24], {"awq": 128}),
    ("bf16_sharded", dict(vocab_size=512, hidden_size=96, intermediate_size=160,
                          num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                          head_dim=24, tie_word_embeddings=False), "bfloat16", [11], {"shards": 2}),
]

THETA = 10000.0  # a small base so short prompts exercise every rotary frequency
N_GREEDY = 8


def make_config(kw, yarn):
    from transformers import Qwen3Config
    base = dict(kw, rms_norm_eps=1e-6, initializer_range=0.1, bos_token_id=151643,
                eos_token_id=151645, attention_bias=False)
    base.setdefault("max_position_embeddings", 4096)
    rope = {"rope_type": "default", "rope_theta": THETA}
    if yarn:
        rope = {"rope_type": "yarn", "rope_theta": THETA, **yarn}
    try:  # transformers 5: rope_parameters
        cfg = Qwen3Config(**base, rope_parameters=rope)
    except TypeError:
        cfg = Qwen3Config(**base, rope_theta=THETA,
                          rope_scaling=None if not yarn else {"rope_type": "yarn", **yarn})
    return cfg


def quantize_awq(w, group):
    """w [out, in] fp32 -> (dequantized w, qweight, qzeros, scales) in AWQ gemm layout."""
    out_f, in_f = w.shape
    wt = w.t().contiguous().reshape(in_f // group, group, out_f)  # [groups, group, out]
    wmin = wt.amin(dim=1).clamp(max=0)
    wmax = wt.amax(dim=1).clamp(min=0)
    scale = ((wmax - wmin) / 15).clamp(min=1e-5).half()
    s = scale.float()
    zero = torch.clamp(torch.round(-wmin / s), 0, 15)
    q = torch.clamp(torch.round(wt / s[:, None, :]) + zero[:, None, :], 0, 15)
    deq = ((q - zero[:, None, :]) * s[:, None, :]).reshape(in_f, out_f).t().contiguous()

    def pack(m):  # m [rows, out] integer codes -> int32 [rows, out/8]
        m = m.to(torch.int64).reshape(m.shape[0], out_f // 8, 8)
        word = torch.zeros(m.shape[0], out_f // 8, dtype=torch.int64)
        for i, col in enumerate(AWQ_ORDER):
            word |= m[:, :, col] << (4 * i)
        word = torch.where(word >= 2 ** 31, word - 2 ** 32, word)
        return word.to(torch.int32)

    qweight = pack(q.reshape(in_f, out_f))
    qzeros = pack(zero)
    # Round trip: unpack and compare.
    unq = torch.zeros(in_f, out_f)
    for i, col in enumerate(AWQ_ORDER):
        unq[:, col::8] = ((qweight.to(torch.int64) >> (4 * i)) & 15).float()
    assert torch.equal(unq, q.reshape(in_f, out_f)), "AWQ packing does not round-trip"
    return deq, qweight, qzeros, scale


def config_json(kw, dtype, yarn, awq):
    c = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **kw,
         "rms_norm_eps": 1e-6, "rope_theta": THETA, "rope_scaling": None,
         "torch_dtype": dtype, "bos_token_id": 151643, "eos_token_id": 151645,
         "attention_bias": False, "hidden_act": "silu"}
    c.setdefault("max_position_embeddings", 4096)
    if yarn:
        c["rope_scaling"] = {"rope_type": "yarn", **yarn}
    if awq:
        c["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": awq,
                                    "version": "gemm", "zero_point": True}
    return c


def build(name, kw, dtype, lengths, opt, out, seed):
    from safetensors.torch import save_file
    from transformers import Qwen3ForCausalLM
    torch.manual_seed(seed)
    cfg = make_config(kw, opt.get("yarn"))
    model = Qwen3ForCausalLM(cfg).float().eval()
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float16
    tensors = {}
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:  # random norm weights, so the norms matter
                p.normal_(1.0, 0.2)
        lin = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for pname, p in model.named_parameters():
            if cfg.tie_word_embeddings and pname == "lm_head.weight":
                continue
            if opt.get("awq") and any(l in pname for l in lin):
                deq, qw, qz, sc = quantize_awq(p.data.float(), opt["awq"])
                p.copy_(deq)
                stem = pname[: -len(".weight")]
                tensors[stem + ".qweight"] = qw
                tensors[stem + ".qzeros"] = qz
                tensors[stem + ".scales"] = sc.contiguous()
            else:
                stored = p.data.to(tdtype)
                p.copy_(stored.float())  # compute on exactly the stored values
                tensors[pname] = stored.contiguous()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    shards = opt.get("shards", 1)
    if shards == 1:
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        wm, total = {}, 0
        for s in range(shards):
            fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, os.path.join(d, fn), metadata={"format": "pt"})
            for n, t in part.items():
                wm[n] = fn
                total += t.numel() * t.element_size()
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=1)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config_json(kw, dtype, opt.get("yarn"), opt.get("awq")), f, indent=2)

    g = torch.Generator().manual_seed(seed + 1)
    ref = {"vocab": kw["vocab_size"], "cases": []}
    with torch.no_grad():
        for ci, n in enumerate(lengths):
            ids = torch.randint(0, kw["vocab_size"], (1, n), generator=g)
            logits = model(ids).logits[0].float()
            fn = "logits_%d.f32" % ci
            logits.numpy().astype("<f4").tofile(os.path.join(d, fn))
            seq = ids
            greedy = []
            for _ in range(N_GREEDY):
                nxt = int(model(seq).logits[0, -1].argmax())
                greedy.append(nxt)
                seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            ref["cases"].append({"ids": ids[0].tolist(), "logits_file": fn, "greedy": greedy,
                                 "max_abs_logit": float(logits.abs().max())})
        rot = model.model.rotary_emb
        ref["inv_freq"] = [float(x) for x in rot.inv_freq]
        ref["attention_scaling"] = float(rot.attention_scaling)
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(name, "ok", "max_abs_logit", [c["max_abs_logit"] for c in ref["cases"]],
          "attention_scaling", ref["attention_scaling"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(4)
    import transformers
    for i, (name, kw, dtype, lengths, opt) in enumerate(MODELS):
        build(name, kw, dtype, lengths, opt, args.out, 1000 + i)
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "models": [m[0] for m in MODELS]}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
