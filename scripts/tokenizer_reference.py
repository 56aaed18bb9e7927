#!/usr/bin/env python3
"""Writes llama.cpp's token ids for a fixed set of strings, as test data for Nave's tokenizer.

Usage: scripts/tokenizer_reference.py MODEL.gguf OUT.json
Needs PyPI `xllamacpp` (llama.cpp's server). Run once per model; the output is committed.
"""
import json, sys, time, urllib.request
import xllamacpp as xl

STRINGS = [
    "Hello, world!", "What is the capital of France?", "The quick brown fox jumps over the lazy dog.",
    "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\n\n", "multiple    spaces   inside",
    "1234567890", "3.14159 and 2.71828", "Prices: $19.99, €5, £3", "year 2026, 12:30pm",
    "café naïve résumé", "Ünïcödé ßtrings", "日本語のテキスト", "中文测试句子。", "한국어 문장",
    "Emoji: 🚀🔥👍🏽", "Mixed: abc日本def😀ghi", "Ελληνικά κείμενο", "Русский текст здесь",
    "العربية", "עברית", "हिन्दी पाठ", "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
    "fn main() { println!(\"hi\"); }", "for (int i = 0; i < 10; i++) { x += i; }", "<div class=\"a\">text</div>",
    "SELECT * FROM users WHERE id = 42;", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "https://example.com/path?query=1&b=2", "user@example.com", "C:\\Windows\\System32",
    "don't won't can't I'm you're they've", "ALL CAPS SENTENCE", "camelCaseIdentifier snake_case_name",
    "a", " ", "\n", "\t\t\t", "!!!???...", "----====____", "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
    "text<|im_end|>more", "The year 1999 was 25 years ago.", "x^2 + y^2 = z^2", "α β γ δ ε",
    "line1\r\nline2\r\n", "    indented code block", "#include <stdio.h>", "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "'quoted' \"double\" `back`", "a\u00a0b (non-breaking space)", "zero\u200bwidth",
]

def main():
    model, out = sys.argv[1], sys.argv[2]
    p = xl.CommonParams()
    p.model.path = model
    p.hostnames = ["127.0.0.1"]
    p.port = 18431
    p.n_ctx = 2048
    srv = xl.Server(p)
    for _ in range(100):
        try:
            urllib.request.urlopen("http://127.0.0.1:18431/health", timeout=1)
            break
        except Exception:
            time.sleep(0.2)
    cases = []
    for s in STRINGS:
        req = urllib.request.Request("http://127.0.0.1:18431/tokenize", data=json.dumps({"content": s, "add_special": False, "parse_special": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        ids = json.load(urllib.request.urlopen(req, timeout=10))["tokens"]
        cases.append({"text": s, "ids": ids})
    json.dump({"source": "llama.cpp server /tokenize (xllamacpp), add_special=false, parse_special=true", "cases": cases}, open(out, "w"), ensure_ascii=False, indent=0)
    del srv
    print(f"{len(cases)} strings written to {out}")

main()
