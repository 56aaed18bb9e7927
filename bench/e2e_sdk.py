#!/usr/bin/env python3
"""End to end as an app sees it: the official OpenAI SDK streaming chat completions
(`stream_options.include_usage`, tokens counted from `usage`) from N concurrent clients,
against one or more OpenAI-compatible servers, alternating rounds so both see the same
machine state. Prints one table; --json writes the figures.

Usage: bench/e2e_sdk.py --target NAME=URL[,KEY] [--target ...] [--clients 1,8,32]
                        [--requests 4] [--max-tokens 64] [--model M] [--json FILE]
"""
import argparse, json, statistics, threading, time
import openai

ap = argparse.ArgumentParser()
ap.add_argument("--target", action="append", required=True, help="NAME=URL[,KEY]")
ap.add_argument("--clients", default="1,8,32")
ap.add_argument("--requests", type=int, default=4, help="requests per client per round")
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--json")
a = ap.parse_args()

TOPICS = ["a lighthouse keeper", "a lost robot", "a dragon who bakes", "two rival chess clubs",
          "a city under the sea", "a time-travelling cat", "the last library", "a mountain train"]


def run(url, key, clients, per):
    client = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=0, timeout=600)
    ttft, total_tokens, errors = [], [0], [0]
    lock = threading.Lock()

    def worker(i):
        for j in range(per):
            topic = TOPICS[(i * per + j) % len(TOPICS)]
            t0 = time.perf_counter()
            first = None
            try:
                stream = client.chat.completions.create(
                    model=a.model, max_tokens=a.max_tokens, temperature=0.7, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                    messages=[{"role": "system", "content": "You are a helpful assistant."},
                              {"role": "user", "content": f"Write a short story about {topic}."}])
                used = 0
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                    if chunk.usage is not None:
                        used = chunk.usage.completion_tokens
                with lock:
                    total_tokens[0] += used
                    if first is not None:
                        ttft.append(first)
            except Exception as e:  # a failed request counts, and the run goes on
                with lock:
                    errors[0] += 1
                print(f"  error from {url}: {e}", flush=True)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {"tokens": total_tokens[0], "wall_s": wall, "ttft": ttft, "errors": errors[0]}


targets = []
for spec in a.target:
    name, rest = spec.split("=", 1)
    url, _, key = rest.partition(",")
    targets.append((name, url, key))

results = {}
for c in [int(x) for x in a.clients.split(",")]:
    for name, url, key in targets:  # warm-up: first-use costs out of the figures
        run(url, key, 1, 1)
    agg = {name: {"tokens": 0, "wall_s": 0.0, "ttft": [], "errors": 0} for name, _, _ in targets}
    for r in range(a.rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for name, url, key in order:
            res = run(url, key, c, a.requests)
            for k in ("tokens", "wall_s", "errors"):
                agg[name][k] += res[k]
            agg[name]["ttft"] += res["ttft"]
    results[c] = {}
    for name in agg:
        g = agg[name]
        ttft = sorted(g["ttft"])
        results[c][name] = {
            "tokens_per_s": g["tokens"] / g["wall_s"] if g["wall_s"] else 0.0,
            "ttft_p50_ms": 1000 * statistics.median(ttft) if ttft else None,
            "ttft_p90_ms": 1000 * ttft[int(0.9 * (len(ttft) - 1))] if ttft else None,
            "requests": a.rounds * c * a.requests,
            "errors": g["errors"],
        }

names = [t[0] for t in targets]
print(f"{'clients':>8} " + " ".join(f"{n + ' tok/s':>16} {n + ' ttft p50':>18}" for n in names))
for c, row in results.items():
    cells = []
    for n in names:
        r = row[n]
        p50 = f"{r['ttft_p50_ms']:.0f} ms" if r["ttft_p50_ms"] is not None else "-"
        cells.append(f"{r['tokens_per_s']:>16.1f} {p50:>18}")
    print(f"{c:>8} " + " ".join(cells) + ("" if all(row[n]["errors"] == 0 for n in names) else "  (errors)"))
if len(names) == 2:
    for c, row in results.items():
        x, y = row[names[0]], row[names[1]]
        if y["tokens_per_s"]:
            print(f"{c:>8} clients: {names[0]}/{names[1]} tokens/s = {x['tokens_per_s'] / y['tokens_per_s']:.2f}")
if a.json:
    with open(a.json, "w") as f:
        json.dump(results, f, indent=2)
