#!/usr/bin/env python3
"""gen_tokenizer_ref.py - reference token ids and chat renders from Hugging Face.

Runs where `tokenizers` and `transformers` are installed (the GPU machine):
    python3 tests/gen_tokenizer_ref.py --out DIR
Reads the real Qwen3 tokenizer vendored in data/qwen3-tokenizer.tar.xz and
writes DIR/tokenizer.jsonl ({"text", "ids", "decoded"} per line) and
DIR/chat.jsonl ({"messages", "enable_thinking", "add_generation_prompt",
"text", "ids"} per line), which tests/tokenizer.sh compares our C tokenizer
and chat template against. The corpus is fixed plus seeded random strings, so
re-running gives the same files.
"""
import argparse, json, os, random, sys, tarfile, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

FIXED = [
    "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello, world!", "Hello world", " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "don't I'm we'll they're she's you've he'd DON'T I'M WE'LL O'Neil's",
    "1234567890 3.14159 1,000,000 2024-11-25 0x1F 007",
    "   leading spaces", "trailing spaces   ", "a  b   c    d     e",
    "tabs\there\t\tand\t\t\tmore", "line1\nline2\n\nline4\n\n\n\nline8",
    "crlf\r\nline\r\n\r\nend\r\n", "mixed \t \n \r\n  \t\t\n   x",
    " \n\n  \n", "\n\n\n", "x\n \n \ny",
    "你好，世界！这是一个测试。", "日本語のテキストです。カタカナ、ひらがな。",
    "한국어 텍스트입니다.", "Привет, мир! Как дела?", "Γειά σου Κόσμε",
    "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "שלום עולם",
    "emoji 😀😃😄 👍🏽 🇺🇸🇩🇪 ❤️",
    "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏿‍💻",
    "combining e\u0301 vs \u00e9, a\u0308o\u0308u\u0308, n\u0303",
    "NFD: Cafe\u0301 re\u0301sume\u0301 \u1100\u1161\u11a8",
    "compat: \ufb01 \u2460 \uff21\uff22 \u00bd",
    "nbsp\u00a0here and ideographic\u3000space and thin\u2009space",
    "zero\u200bwidth\u200cjoiner\u200dtest\ufeff",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning here\n</think>\n\nanswer", "text<|endoftext|>more",
    "<|im_start|><|im_end|><|im_start|>", "< |im_start| > <|im_start",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "$$E = mc^2$$ and \\frac{a}{b} \\alpha_1",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ALLCAPS WORDS AND MiXeD CaSe",
    "!!!???...,,,;;;:::---___===+++",
    "'''\"\"\"```", "'s 's 'S ''s",
    "end with newline\n", "\u00e9\u00e9\u00e9\u00e9", "🙂" * 10,
    "中文和English混合text123测试",
]

RANGES = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
          (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x2000, 0x206f),
          (0x3000, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xad00), (0x1f300, 0x1f64f),
          (0x1f900, 0x1f9ff), (0x300, 0x36f), (0xfe00, 0xfe0f)]


def random_texts(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.15:
                parts.append(rng.choice([" ", "  ", "\n", "\t", "\r\n", " \n", "\u200d", "   "]))
            elif r < 0.25:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 8))))
            elif r < 0.3:
                parts.append(rng.choice(["<|im_start|>", "<|im_end|>", "<think>", "</think>",
                                         "<|endoftext|>", "'s", "'ll"]))
            else:
                lo, hi = rng.choice(RANGES)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


CHATS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "Summarize this document:\n\nThe cat sat on the mat."}], True),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "Summarize this document:\n\nThe cat sat on the mat."}], False),
    ([{"role": "system", "content": "Translate to German."},
      {"role": "user", "content": "  leading and trailing whitespace  \n\n"}], False),
    ([{"role": "user", "content": "中文问题？ 😀 <think>not a thought</think>"}], True),
    ([{"role": "user", "content": ""}], False),
    ([{"role": "system", "content": ""}, {"role": "user", "content": "x"}], True),
    ([{"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "<think>\nSimple.\n</think>\n\n4"},
      {"role": "user", "content": "And 3+3?"}], True),
    ([{"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}], False),
    ([{"role": "user", "content": "line\r\nwith crlf\ttab"}], False),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--random", type=int, default=300)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tokdir = tempfile.mkdtemp()
    with tarfile.open(os.path.join(HERE, "..", "data", "qwen3-tokenizer.tar.xz")) as tf:
        tf.extractall(tokdir)
    from tokenizers import Tokenizer
    import transformers
    from transformers import AutoTokenizer
    raw = Tokenizer.from_file(os.path.join(tokdir, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(tokdir)

    texts = FIXED + random_texts(args.random)
    big = "\n\n".join(FIXED[20:]) * 3
    texts.append(big)
    n_diff = 0
    with open(os.path.join(args.out, "tokenizer.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            ids = raw.encode(t, add_special_tokens=False).ids
            ids2 = hf.encode(t, add_special_tokens=False)
            if ids != ids2:
                n_diff += 1
            dec = raw.decode(ids, skip_special_tokens=False)
            f.write(json.dumps({"text": t, "ids": ids, "decoded": dec}, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "chat.jsonl"), "w", encoding="utf-8") as f:
        for msgs, think in CHATS:
            text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                          enable_thinking=think)
            ids = raw.encode(text, add_special_tokens=False).ids
            f.write(json.dumps({"messages": msgs, "enable_thinking": think,
                                "add_generation_prompt": True, "text": text, "ids": ids},
                               ensure_ascii=False) + "\n")
    import tokenizers
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump({"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                   "texts": len(texts), "chats": len(CHATS),
                   "tokenizers_vs_transformers_mismatches": n_diff}, f, indent=1)
    print("texts", len(texts), "chats", len(CHATS), "mismatch raw/hf", n_diff,
          "tokenizers", tokenizers.__version__, "transformers", transformers.__version__)


if __name__ == "__main__":
    sys.exit(main())
