#!/usr/bin/env python3
"""PyTorch eager on the same weights as `nave bench engine`: the peer of the GPU check.

Reads a Llama-architecture GGUF (the `gguf` package dequantizes its tensors), builds the
model in plain PyTorch (bf16 weights on the GPU, a preallocated KV cache, SDPA attention),
and measures what `nave bench engine` measures, on the same prompts: prefill of a
`--prompt-tokens` prompt, batch-1 decode, and aggregate decode of N sequences of 16-token
prompts decoding `--decode-tokens` tokens each (one batch of N rows per step, greedy).
The last line of output is the figures as JSON, in `nave bench engine`'s shape, with the
batch-1 decode's greedy tokens.

    python3 scripts/gpu_torch_peer.py --model r1b.gguf --concurrency 1,16,64
"""
import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def load(path, device, dtype):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    meta = {}
    for f in r.fields.values():
        if f.name.startswith("llama.") and f.types and len(f.data) == 1:
            meta[f.name] = f.parts[f.data[0]].tolist()[0]
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        # GGUF lists dimensions innermost first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w[t.name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(shape)).to(device, dtype)
    return meta, w


class Llama:
    def __init__(self, meta, w, max_batch, max_len, device, dtype):
        self.w = w
        self.hidden = meta["llama.embedding_length"]
        self.layers = meta["llama.block_count"]
        self.heads = meta["llama.attention.head_count"]
        self.kv_heads = meta.get("llama.attention.head_count_kv", self.heads)
        self.hd = self.hidden // self.heads
        self.eps = meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)
        theta = meta.get("llama.rope.freq_base", 10000.0)
        inv = 1.0 / theta ** (torch.arange(0, self.hd, 2, device=device, dtype=torch.float32) / self.hd)
        ang = torch.arange(max_len, device=device, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos(), ang.sin()
        shape = (self.layers, max_batch, self.kv_heads, max_len, self.hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.out = w.get("output.weight", w["token_embd.weight"])

    def norm(self, x, weight):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * weight

    def rope(self, x, pos):
        # GGUF's Llama tensors rotate adjacent pairs (the converter permuted q and k).
        b, h, t, d = x.shape
        c, s = self.cos[pos][None, None], self.sin[pos][None, None]
        p = x.float().reshape(b, h, t, d // 2, 2)
        a, bb = p[..., 0], p[..., 1]
        return torch.stack((a * c - bb * s, a * s + bb * c), -1).reshape(b, h, t, d).to(x.dtype)

    @torch.inference_mode()
    def forward(self, tokens, start):
        """tokens (batch, t) at positions start..start+t of every row; logits of the last."""
        w, (b, t) = self.w, tokens.shape
        pos = torch.arange(start, start + t, device=tokens.device)
        x = w["token_embd.weight"][tokens]
        for i in range(self.layers):
            p = f"blk.{i}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).view(b, t, self.heads, self.hd).transpose(1, 2)
            k = (h @ w[p + "attn_k.weight"].T).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
            v = (h @ w[p + "attn_v.weight"].T).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            self.k[i, :b, :, start : start + t] = k
            self.v[i, :b, :, start : start + t] = v
            kk, vv = self.k[i, :b, :, : start + t], self.v[i, :b, :, : start + t]
            o = F.scaled_dot_product_attention(
                q, kk, vv, is_causal=t > 1 and start == 0, enable_gqa=self.kv_heads != self.heads
            )
            x = x + o.transpose(1, 2).reshape(b, t, self.hidden) @ w[p + "attn_output.weight"].T
            h = self.norm(x, w[p + "ffn_norm.weight"])
            g = F.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)
            x = x + g @ w[p + "ffn_down.weight"].T
        x = self.norm(x[:, -1], w["output_norm.weight"])
        return (x @ self.out.T).float()


def prompt(n, first):
    # `nave bench engine`'s prompts: a fixed pattern, the first token made distinct.
    t = [1000 + (i * 37) % 5000 for i in range(n)]
    t[0] = first
    return t


def sync():
    torch.cuda.synchronize() if torch.cuda.is_available() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    conc = [int(c) for c in a.concurrency.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, a.dtype)
    t0 = time.time()
    meta, w = load(a.model, device, dtype)
    m = Llama(meta, w, max(conc + [1]), a.prompt_tokens + a.decode_tokens + 32, device, dtype)
    print(f"loaded {a.model} as {a.dtype} on {device} in {time.time() - t0:.1f} s", file=sys.stderr)
    ids = lambda rows: torch.tensor(rows, device=device)

    def generate(rows, steps):
        logits = m.forward(ids(rows), 0)
        out = []
        for s in range(steps):
            nxt = logits.argmax(-1)
            out.append(nxt.tolist())
            if s + 1 < steps:
                logits = m.forward(nxt[:, None], len(rows[0]) + s)
        return out

    generate([prompt(32, 999_999 % 4000 + 1000)], 4)  # warm-up
    sync()
    t = time.time()
    m.forward(ids([prompt(a.prompt_tokens, 1000)]), 0)
    sync()
    prefill = a.prompt_tokens / (time.time() - t)

    logits = m.forward(ids([prompt(16, 1001)]), 0)
    greedy = [int(logits.argmax(-1))]
    sync()
    t = time.time()
    for s in range(a.decode_tokens):
        logits = m.forward(torch.tensor([[greedy[-1]]], device=device), 16 + s)
        greedy.append(int(logits.argmax(-1)))
    sync()
    decode = a.decode_tokens / (time.time() - t)

    aggregate = []
    for c in conc:
        rows = [prompt(16, 1000 + (10 + i) % 4000) for i in range(c)]
        sync()
        t = time.time()
        generate(rows, a.decode_tokens)
        sync()
        aggregate.append([c, c * a.decode_tokens / (time.time() - t)])
    print(
        json.dumps(
            {
                "system": f"pytorch-eager-{a.dtype}",
                "prefill_tok_s": prefill,
                "decode_tok_s": decode,
                "aggregate": aggregate,
                "greedy_tokens": greedy,
                "weight_bytes": sum(x.numel() * x.element_size() for x in w.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
