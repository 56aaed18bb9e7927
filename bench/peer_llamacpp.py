#!/usr/bin/env python3
"""llama.cpp's figures for `nave bench engine`: the same model file, thread count, prompt
and decode lengths, measured through llama.cpp's own server (PyPI xllamacpp) with
continuous batching and one slot per concurrent sequence. Prints one JSON line last."""
import argparse, json, threading, time, urllib.request
import xllamacpp as xl

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--concurrency", default="1,4,16,64")
ap.add_argument("--prompt-tokens", type=int, default=256)
ap.add_argument("--decode-tokens", type=int, default=64)
ap.add_argument("--port", type=int, default=18432)
a = ap.parse_args()
conc = [int(c) for c in a.concurrency.split(",")]

p = xl.CommonParams()
p.model.path = a.model
p.hostnames = ["127.0.0.1"]
p.port = a.port
p.cpuparams.n_threads = a.threads
p.cpuparams_batch.n_threads = a.threads
p.n_parallel = max(conc)
p.n_ctx = max(conc) * (a.prompt_tokens + a.decode_tokens + 64)
p.cont_batching = True
srv = xl.Server(p)
base = f"http://127.0.0.1:{a.port}"
for _ in range(200):
    try:
        urllib.request.urlopen(base + "/health", timeout=1); break
    except Exception:
        time.sleep(0.2)

def complete(tokens, n_predict):
    body = {"prompt": tokens, "n_predict": n_predict, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    req = urllib.request.Request(base + "/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))

def prompt(n, i):
    t = [1000 + (k * 37) % 5000 for k in range(n)]
    t[0] = 1000 + i % 4000
    return t

complete(prompt(32, 999999), 4)
r = complete(prompt(a.prompt_tokens, 0), 1)
prefill = r["timings"]["prompt_per_second"]
r = complete(prompt(16, 1), a.decode_tokens + 1)
decode = r["timings"]["predicted_per_second"]
agg = []
for c in conc:
    counts = [0] * c
    def run(i):
        counts[i] = complete(prompt(16, 10 + i), a.decode_tokens)["tokens_predicted"]
    t = time.time()
    ths = [threading.Thread(target=run, args=(i,)) for i in range(c)]
    [th.start() for th in ths]; [th.join() for th in ths]
    agg.append([c, sum(counts) / (time.time() - t)])
del srv
print(json.dumps({"system": "llama.cpp", "prefill_tok_s": prefill, "decode_tok_s": decode, "aggregate": agg}))
