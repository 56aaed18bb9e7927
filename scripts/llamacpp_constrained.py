"""llama.cpp's constrained decoding beside its unconstrained decoding, the peer figures of
inference/examples/constrained.rs: the same SmolLM2 file, prompt and JSON schema, sampled
at temperature 1 with seeds, at 1 and 16 concurrent requests (one llama.cpp server using
all cores with 16 slots, as its docs recommend for concurrent clients).

Usage: python3 scripts/llamacpp_constrained.py [MODEL.gguf]
"""
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import llamacpp_server  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/nave/models/smollm2-135m.gguf")
SCHEMA = json.loads(open(os.path.join(os.path.dirname(__file__), "..", "inference", "examples",
                                      "constrained_schema.json")).read())
PROMPT = [{"role": "user", "content": "Describe a person as JSON."}]


def run(base, clients, constrained):
    def one(i):
        body = {"messages": PROMPT, "temperature": 1.0, "seed": i + 1}
        if constrained:
            body.update(max_tokens=256, response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}})
        else:
            body.update(max_tokens=64, ignore_eos=True)
        r = llamacpp_server.post(base, "/v1/chat/completions", body)
        if constrained and r["choices"][0]["finish_reason"] == "stop":
            json.loads(r["choices"][0]["message"]["content"])
        return r["usage"]["completion_tokens"]

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(clients)))
    return tokens / (time.time() - started), tokens


srv, base = llamacpp_server.start(MODEL, 18089, n_ctx=16 * 1024, parallel=16)
run(base, 4, True)  # warm up
print("| concurrent | unconstrained tok/s | constrained tok/s | ratio |")
print("| ---: | ---: | ---: | ---: |")
for c in [1, 16]:
    free, _ = run(base, c, False)
    held, n = run(base, c, True)
    print(f"| {c} | {free:.1f} | {held:.1f} ({n} tokens) | {held / free:.2f} |")
