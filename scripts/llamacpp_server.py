"""llama.cpp's server (PyPI xllamacpp) on one model, for the reference scripts beside this
file: start it on a loopback port, wait until it answers, post JSON to it."""
import json, os, time, urllib.request

import xllamacpp as xl


def start(model, port, n_ctx, threads=True, f32_kv=False, parallel=1):
    """A running server on `model` (keep the returned object alive) and its base URL.
    `threads`: all cores for prompt and generation; `f32_kv`: the KV cache in f32 with
    flash attention off, the configuration that computes attention as Nave does;
    `parallel`: slots (concurrent sequences), each with `n_ctx / parallel` of the context."""
    p = xl.CommonParams()
    p.model.path = model
    p.hostnames = ["127.0.0.1"]
    p.port = port
    if threads:
        p.cpuparams.n_threads = os.cpu_count() or 2
        p.cpuparams_batch.n_threads = os.cpu_count() or 2
        p.n_parallel = parallel
    p.n_ctx = n_ctx
    if f32_kv:
        p.cache_type_k = xl.ggml_type.GGML_TYPE_F32
        p.cache_type_v = xl.ggml_type.GGML_TYPE_F32
        p.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    srv = xl.Server(p)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except Exception:
            time.sleep(0.2)
    return srv, base


def post(base, path, body, timeout=600):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=timeout))
