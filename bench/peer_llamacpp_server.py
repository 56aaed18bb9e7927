#!/usr/bin/env python3
"""Serves a GGUF file with llama.cpp's OpenAI-compatible server (PyPI xllamacpp) until
interrupted: the peer for `nave bench --compare`.

Usage: bench/peer_llamacpp_server.py MODEL.gguf PORT [THREADS] [PARALLEL]
"""
import signal, sys, time
import xllamacpp as xl

model, port = sys.argv[1], int(sys.argv[2])
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 8
p = xl.CommonParams()
p.model.path = model
p.hostnames = ["127.0.0.1"]
p.port = port
p.cpuparams.n_threads = threads
p.cpuparams_batch.n_threads = threads
p.n_parallel = parallel
p.n_ctx = parallel * 1024
p.cont_batching = True
srv = xl.Server(p)
print(f"llama.cpp serving {model} on 127.0.0.1:{port} ({threads} threads, {parallel} slots)", flush=True)
stop = False
def on_signal(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
while not stop:
    time.sleep(0.2)
del srv
