#!/usr/bin/env python3
"""The llama.cpp side of inference/tests/conformance.rs: runs llama.cpp (PyPI xllamacpp) on
the small model of every family that the Rust test writes (random seeded weights, real
tensor names, SmolLM2's or Gemma 3's vocabulary) and saves, per family, the file's
sha256, and for three prompts the greedy tokens of 32 steps with the probabilities of the
five likeliest tokens at each step. llama.cpp keeps the KV cache in f32 with flash
attention off, as Nave computes attention. Run it again when the writer changes:

    python3 scripts/llamacpp_conformance.py > inference/tests/data/conformance_llamacpp.json

It writes the models first with
`cargo test -p nave-inference --test conformance -- --ignored write_family_models_for_llama_cpp`
(into a temporary folder, or NAVE_CONFORMANCE_DIR if set and already filled).
"""
import hashlib, json, math, os, subprocess, sys, tempfile

import xllamacpp as xl

import llamacpp_server
from llamacpp_server import post

FAMILIES = ["llama3", "llama-linear", "llama-yarn", "mistral", "qwen2", "qwen3", "phi3", "gemma2"]
if os.environ.get("FAMILIES"):
    FAMILIES = os.environ["FAMILIES"].split(",")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "Once upon a time, in a land far away,"]
STEPS = 32

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
folder = os.environ.get("NAVE_CONFORMANCE_DIR") or tempfile.mkdtemp(prefix="nave-conformance-")
if not all(os.path.exists(os.path.join(folder, f + ".gguf")) for f in FAMILIES):
    subprocess.run(["cargo", "test", "-p", "nave-inference", "--locked", "--test", "conformance", "--", "--ignored",
                    "write_family_models_for_llama_cpp"], cwd=root, check=True,
                   env=dict(os.environ, NAVE_CONFORMANCE_DIR=folder), stdout=sys.stderr)


out = {"source": f"llama.cpp via xllamacpp {xl.__version__ if hasattr(xl, '__version__') else ''}".strip() +
       ", f32 KV cache, flash attention off, greedy (top_k 1), n_probs 5 before sampling",
       "steps": STEPS, "families": {}}
for i, family in enumerate(FAMILIES):
    path = os.path.join(folder, family + ".gguf")
    port = 18500 + i
    srv, base = llamacpp_server.start(path, port, 512, f32_kv=True)
    cases = []
    for q in PROMPTS:
        prompt = post(base, "/tokenize", {"content": q, "add_special": True, "parse_special": True})["tokens"]
        r = post(base, "/completion", {"prompt": prompt, "n_predict": STEPS, "temperature": 0, "top_k": 1,
                                       "ignore_eos": True, "cache_prompt": False, "return_tokens": True,
                                       "samplers": ["top_k"], "n_probs": 5, "post_sampling_probs": False})
        # The server leaves out the probabilities of some steps (tokens that end inside a
        # UTF-8 character): align the rest by their ids, null where absent.
        top5, at = [None] * len(r["tokens"]), 0
        for step in r["completion_probabilities"]:
            while at < len(r["tokens"]) and r["tokens"][at] != step["id"]:
                at += 1
            if at < len(r["tokens"]):
                top5[at] = [[t["id"], math.exp(t["logprob"])] for t in step["top_logprobs"]]
                at += 1
        cases.append({"text": q, "prompt": prompt, "tokens": r["tokens"], "top5": top5})
        print(f"{family}: {q!r} -> {r['tokens'][:8]}... ({r['content'][:40]!r})", file=sys.stderr)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    out["families"][family] = {"sha256": sha, "cases": cases}
    del srv
json.dump(out, sys.stdout, indent=None, separators=(",", ":"))
print()
