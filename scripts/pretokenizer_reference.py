#!/usr/bin/env python3
"""llama.cpp's token ids for each pre-tokenizer (`tokenizer.ggml.pre`) on a fixed set of
strings, with SmolLM2's vocabulary: the reference of inference/tests/pretokenizers.rs.
The Rust side writes one small model per pre-tokenizer (llama.cpp must load a model to
tokenize); this runs llama.cpp's server (PyPI xllamacpp) on each and asks `/tokenize`.

    python3 scripts/pretokenizer_reference.py > inference/tests/data/pretokenizers_llamacpp.json
"""
import json, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp_server
PRES = ["llama-bpe", "qwen2", "smollm", "deepseek-coder", "deepseek-v3", "gpt-2", "starcoder", "falcon", "tekken",
        "bloom", "default"]
if os.environ.get("PRES"):
    PRES = os.environ["PRES"].split(",")
# The strings of scripts/tokenizer_reference.py, then more digits, whitespace and code.
import importlib.util
spec = importlib.util.spec_from_file_location("tr", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_reference.py"))
src = open(spec.origin).read()
STRINGS = eval(src[src.index("STRINGS = [") + len("STRINGS = "):src.index("]\n\ndef main") + 1])
STRINGS += [
    "123456789012345", "x = 1234567 + 89", "v1.2.3-rc4", "0x1F9A 0b1010", "1,000,000.00",
    "a  \n\n  b", "   \t\n  \r\n", "end with newline\n", "\n\n\nthree newlines", "tab\tafter\ttab",
    "    def f(self, x):\n        return x ** 2  # square\n", "if (a && b || !c) { return -1; }",
    "let v: Vec<u8> = vec![1, 2, 3];", "print(f\"{name!r:>10}\")", "<|im_start|>assistant\nSure!<|im_end|>",
    "I'LL DO IT. You'RE right, we'VE seen", "naïve façade — “quotes” ‘single’", "数字123和English混合",
    "カタカナとひらがな", "Ωμέγα 123 αβγ", "emoji🙂text🙃", "a.b,c!d?e…f",
]

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
folder = os.environ.get("NAVE_PRETOKENIZER_DIR") or tempfile.mkdtemp(prefix="nave-pre-")
missing = [p for p in PRES if not os.path.exists(os.path.join(folder, p + ".gguf"))]
if missing:
    subprocess.run(["cargo", "test", "-p", "nave-inference", "--locked", "--test", "pretokenizers", "--", "--ignored",
                    "write_pretokenizer_models_for_llama_cpp"], cwd=root, check=True, stdout=sys.stderr,
                   env=dict(os.environ, NAVE_PRETOKENIZER_DIR=folder, NAVE_PRETOKENIZERS=",".join(missing)))

out = {"source": "llama.cpp server /tokenize (xllamacpp), add_special=false, parse_special=true; SmolLM2's vocabulary",
       "strings": STRINGS, "pre": {}}
for i, pre in enumerate(PRES):
    port = 18700 + i
    srv, base = llamacpp_server.start(os.path.join(folder, pre + ".gguf"), port, 512, threads=False)
    ids = []
    for s in STRINGS:
        body = {"content": s, "add_special": False, "parse_special": True}
        ids.append(llamacpp_server.post(base, "/tokenize", body, timeout=30)["tokens"])
    out["pre"][pre] = ids
    print(f"{pre}: {len(ids)} strings", file=sys.stderr)
    del srv
json.dump(out, sys.stdout, ensure_ascii=False, indent=None, separators=(",", ":"))
print()
