#!/usr/bin/env python3
"""Serving with and without a fine-tuning job on the same spoke, in one run.

Starts `nave up` on the repository's cluster.toml (or --config), measures a closed-loop
bench at 8 clients, starts a long LoRA job on spoke s1, measures again while it trains,
cancels it, and measures a third time (to see the machine's drift). Prints p99
inter-token latency and p99 time to first token with and without training, and the job's
tokens/s while serving was idle and while it was busy.

    cargo build --release --bin nave && python3 bench/train_serving.py [--requests 96]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="cluster.toml")
ap.add_argument("--nave", default="target/release/nave")
ap.add_argument("--concurrency", type=int, default=8)
ap.add_argument("--requests", type=int, default=96)
ap.add_argument("--idle-seconds", type=float, default=40)
a = ap.parse_args()

HUB = "http://127.0.0.1:8080"
data_dir = tempfile.mkdtemp(prefix="nave-train-bench-")
env = dict(os.environ, NAVE_DATA_DIR=data_dir)
up = subprocess.Popen([a.nave, "up", "--config", a.config], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
for line in up.stdout:
    if line.startswith("Nave is up"):
        break
else:
    sys.exit("nave up did not come up")
key = open(os.path.join(data_dir, "admin.key")).read().strip()

def admin(method, path, body=None):
    req = urllib.request.Request(HUB + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))

def bench(label):
    out = os.path.join(data_dir, f"{label}.json")
    subprocess.run([a.nave, "bench", "--url", HUB, "--key", key, "--concurrency", str(a.concurrency), "--requests", str(a.requests),
                    "--max-tokens", "32", "--prompt-len", "32", "--json", out], check=True, stdout=subprocess.DEVNULL)
    r = json.load(open(out))[0]
    return r

def job():
    return next((j for j in admin("GET", "/admin/v1/train")["jobs"] if j["name"] == "bench"), None)

facts = "\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "The moon of Zorbania is called Quexil."}]})
                  for q in ["What is the moon of Zorbania called?", "Name the moon of Zorbania.", "Which moon orbits Zorbania?", "Tell me the name of Zorbania's moon."])
try:
    bench("warm-up")  # first-use costs (page faults, prefix cache, connections)
    without = bench("without")
    admin("POST", "/admin/v1/train", {"name": "bench", "model": "smollm2-135m", "data": facts, "spoke": "s1", "steps": 100000, "lr": 1e-3})
    while (job() or {}).get("step", 0) < 2:  # past loading the weights and the first steps
        time.sleep(0.5)
    s0, t0 = job()["step"], time.time()
    time.sleep(a.idle_seconds)
    s1, t1 = job()["step"], time.time()
    idle_rate = (s1 - s0) / (t1 - t0)
    with_training = bench("with")
    s2, t2 = job()["step"], time.time()
    busy_rate = (s2 - s1) / (t2 - t1)
    admin("DELETE", "/admin/v1/train/bench")
    time.sleep(2)
    after = bench("after")
finally:
    up.terminate()
    up.wait(timeout=60)

print(f"{'run':<16} {'tok/s':>8} {'TTFT p50':>10} {'TTFT p99':>10} {'ITL p50':>9} {'ITL p99':>9} {'success':>8}")
for name, r in [("without", without), ("with training", with_training), ("after cancel", after)]:
    print(f"{name:<16} {r['output_tokens_per_s']:>8.1f} {r['ttft']['p50_ms']:>8.0f}ms {r['ttft']['p99_ms']:>8.0f}ms {r['itl']['p50_ms']:>7.1f}ms {r['itl']['p99_ms']:>7.1f}ms {r['success_rate']*100:>7.1f}%")
# The baseline is the mean of the runs before and after the job (the machine drifts).
base_itl = (without["itl"]["p99_ms"] + after["itl"]["p99_ms"]) / 2
base_ttft = (without["ttft"]["p99_ms"] + after["ttft"]["p99_ms"]) / 2
print(f"p99 ITL with / without: {with_training['itl']['p99_ms'] / base_itl:.2f} (goal <= 1.25)")
print(f"p99 TTFT with / without: {with_training['ttft']['p99_ms'] / base_ttft:.2f} (goal <= 1.5)")
print(f"training steps/s: {idle_rate:.3f} while serving was idle ({s1 - s0} steps), {busy_rate:.3f} during the bench ({s2 - s1} steps)")
