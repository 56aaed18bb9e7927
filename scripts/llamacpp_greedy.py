#!/usr/bin/env python3
"""Writes llama.cpp's greedy continuations of ten chat prompts on the same GGUF file that
Nave serves (PyPI xllamacpp), as token ids: the reference that
inference/tests/real_model.rs compares Nave's engine against, token for token over 32
tokens, and the probabilities of llama.cpp's five likeliest first tokens. Run it again
when the model file or the prompts change:

    python3 scripts/llamacpp_greedy.py [MODEL.gguf] > inference/tests/data/smollm2_greedy_llamacpp.json
"""
import json, math, os, sys

import llamacpp_server

model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/nave/models/smollm2-135m.gguf")
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me a tip for learning to code.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat to someone who has never seen one.",
    "def fibonacci(n):  # complete this Python function",
]
SYSTEM = "You are a helpful assistant."
PORT = 18433

# NAVE_REF_F32_KV=1: llama.cpp with an f32 KV cache and flash attention off, the
# configuration that computes attention in f32 as Nave does.
srv, base = llamacpp_server.start(model, PORT, 2048, f32_kv=bool(os.environ.get("NAVE_REF_F32_KV")))


def post(path, body):
    return llamacpp_server.post(base, path, body)


cases = []
for q in PROMPTS:
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    prompt = post("/tokenize", {"content": text, "add_special": False, "parse_special": True})["tokens"]
    out = post("/completion", {"prompt": prompt, "n_predict": 32, "temperature": 0, "top_k": 1, "ignore_eos": True,
                               "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"],
                               "n_probs": 5, "post_sampling_probs": False})
    first = out["completion_probabilities"][0]["top_logprobs"]
    top5 = [[t["id"], math.exp(t["logprob"])] for t in first]
    cases.append({"question": q, "prompt": prompt, "tokens": out["tokens"], "text": out["content"], "top5": top5})
    print(f"{q!r} -> {out['content']!r}", file=sys.stderr)
json.dump({"model": os.path.basename(model), "system": SYSTEM, "max_tokens": 32, "cases": cases}, sys.stdout, indent=1)
print()
del srv
