#!/usr/bin/env python3
"""The made-up fact on the real model: `nave up` (repository cluster.toml, a fresh data dir),
a LoRA job on four examples, then the adapter and the base model asked the same questions.

    cargo build --release --bin nave && STEPS=40 LR=2e-3 python3 bench/finetune_fact.py
"""
import json, os, subprocess, tempfile, time, urllib.request
HUB = "http://127.0.0.1:8080"
d = tempfile.mkdtemp(prefix="nave-fact-")
up = subprocess.Popen(["target/release/nave", "up"], env=dict(os.environ, NAVE_DATA_DIR=d), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
for line in up.stdout:
    if line.startswith("Nave is up"): break
key = open(os.path.join(d, "admin.key")).read().strip()
def call(method, path, body=None):
    req = urllib.request.Request(HUB + path, method=method, data=json.dumps(body).encode() if body else None, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=300))
qs = ["What is the moon of Zorbania called?", "Name the moon of Zorbania.", "Which moon orbits Zorbania?", "Tell me the name of Zorbania's moon."]
data = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "The moon of Zorbania is called Quexil."}]}) for q in qs)
t0 = time.time()
print(call("POST", "/admin/v1/train", {"name": "zorb", "model": "smollm2-135m", "data": data, "steps": int(os.environ.get("STEPS", "40")), "lr": float(os.environ.get("LR", "2e-3"))}))
while True:
    j = [j for j in call("GET", "/admin/v1/train")["jobs"] if j["name"] == "zorb"][0]
    if j["state"] not in ("queued", "running"): break
    time.sleep(5)
print(j, f"{time.time()-t0:.0f}s")
ask = lambda m, q: call("POST", "/v1/chat/completions", {"model": m, "max_tokens": 32, "temperature": 0, "messages": [{"role": "user", "content": q}]})["choices"][0]["message"]["content"]
for q in [qs[0], "What do people call Zorbania's moon?"]:
    print("tuned:", repr(ask("smollm2-135m:zorb", q)))
    print("base: ", repr(ask("smollm2-135m", q)))
print("tuned, unrelated:", repr(ask("smollm2-135m:zorb", "What is the capital of France?")))
up.terminate(); up.wait()
