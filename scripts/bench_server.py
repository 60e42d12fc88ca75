#!/usr/bin/env python3
"""`longctx serve` against llama.cpp's `llama-server` on the same GGUF and the same cores: output tokens/s and time
to first token at several concurrencies, with long prompts (KJV passages of --prompt-chars characters, a different
passage per request so no server reuses a prefix across requests), greedy, --max-tokens answers with end of
generation ignored (both servers take llama-server's ignore_eos field).

llama-server comes from the llama.cpp sources inside the PyPI llama-cpp-python==0.3.36 source distribution, built
for the CPU (scripts/cuda_device_peer.sh --trim says how the tree is trimmed; the server also needs tools/server,
tools/mtmd and tools/ui):
    cmake -S LLAMA_SRC -B build-llama -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON
    cmake --build build-llama --target llama-server

Usage: bench_server.py --longctx build/release/longctx --llama-server build-llama/bin/llama-server \
           [--model M] [--concurrency 1,4,16] [--prompt-chars 16000] [--max-tokens 64] [--threads 2] [--kv full] \
           [--longctx-args "--no-batch-invariant"] [--skip-llama]

Each server runs with --threads threads and starts afresh for each concurrency c: llama-server with c slots (-np c)
of --ctx-per-request tokens each, flash attention on, f16 KV, no prompt cache; longctx serve with c requests running
at once (--max-running c, its continuous batching) and a queue of c, no prefix reuse. For each concurrency c, c
clients each send
--rounds requests back to back; the table gives aggregate output tokens/s (all tokens generated / wall time) and the
median TTFT and per-request output rate.
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import statistics
import subprocess
import threading
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--longctx", required=True)
ap.add_argument("--llama-server", required=True)
ap.add_argument("--model", default=os.path.join(os.path.expanduser("~/.cache/longctx"), "SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--doc", default=os.path.join(os.path.dirname(__file__), "..", "data", "kjv.txt"))
ap.add_argument("--concurrency", default="1,4,16")
ap.add_argument("--rounds", type=int, default=1, help="requests each client sends")
ap.add_argument("--prompt-chars", type=int, default=16000)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--threads", default=str(os.cpu_count()))
ap.add_argument("--kv", default="full")
ap.add_argument("--ctx-per-request", type=int, default=8192)
ap.add_argument("--longctx-args", default="", help="more options for longctx serve, space-separated")
ap.add_argument("--skip-llama", action="store_true", help="run longctx only")
args = ap.parse_args()
concurrencies = [int(c) for c in args.concurrency.split(",")]
c_max = max(concurrencies)

with open(args.doc, encoding="utf-8", errors="replace") as f:
    corpus = f.read()


def prompt(i):
    start = (i * 7919 * 13) % (len(corpus) - args.prompt_chars - 1)
    return corpus[start:start + args.prompt_chars] + "\n\nSummarize the passage above."


def start_server(cmd, port_pattern, port_fixed=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    port = port_fixed
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(port_pattern, line)
        if m:
            # Keep draining the log: a server blocked on a full pipe would stall the benchmark.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port or int(m.group(1))
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start")


def request(port, i, extra):
    body = {"messages": [{"role": "user", "content": prompt(i)}], "temperature": 0, "max_tokens": args.max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, n_out, n_prompt = None, 0, 0
    with urllib.request.urlopen(req, timeout=3600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("delta", {}).get("content"):
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if ev.get("usage"):
                n_out = ev["usage"]["completion_tokens"]
                n_prompt = ev["usage"]["prompt_tokens"]
    total = time.perf_counter() - t0
    return ttft if ttft is not None else total, n_out, n_prompt, total


def run(port, c, extra, first_id):
    def client(k):
        out = []
        for r in range(args.rounds):
            out.append(request(port, first_id + k * args.rounds + r, extra))
        return out
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(c) as ex:
        results = [x for f in [ex.submit(client, k) for k in range(c)] for x in f.result()]
    wall = time.perf_counter() - t0
    n_out = sum(r[1] for r in results)
    return dict(tok_s=n_out / wall, ttft=statistics.median(r[0] for r in results),
                per_req=statistics.median(r[1] / max(1e-9, r[3] - r[0]) for r in results),
                prompt=statistics.median(r[2] for r in results), n_out=n_out, wall=wall)


# Each server starts afresh for each concurrency c, sized for it: llama-server with c slots of --ctx-per-request
# tokens each, longctx with c running and a queue of c.
servers = {
    "longctx": (lambda c: [args.longctx, "serve", "-m", args.model, "--port", "0", "-t", args.threads, "--kv", args.kv,
                           "--ctx", str(args.ctx_per_request), "--max-queue", str(c), "--max-running", str(c),
                           "--no-prefix-reuse", *args.longctx_args.split()],
                r"listening on http://127\.0\.0\.1:(\d+)", None, {"ignore_eos": True}),
    "llama-server": (lambda c: [args.llama_server, "-m", args.model, "--port", "18431", "-t", args.threads, "-tb",
                                args.threads, "-np", str(c), "-c", str(c * args.ctx_per_request), "-fa", "on", "-ctk",
                                "f16", "-ctv", "f16", "-b", "512", "-ub", "512", "--no-cache-prompt", "--no-ui"],
                     r"listening on http://127\.0\.0\.1:(\d+)", 18431, {"ignore_eos": True}),
}
rows = []
for name, (cmd, pattern, port_fixed, extra) in servers.items():
    if name == "llama-server" and args.skip_llama:
        continue
    next_id = 0  # the same prompts for each server
    for c in concurrencies:
        proc, port = start_server(cmd(c), pattern, port_fixed)
        try:
            request(port, 10**6, extra)  # warm-up
            r = run(port, c, extra, next_id)
            next_id += c * args.rounds
            rows.append((name, c, r))
            print(name, c, r, flush=True)
        finally:
            proc.terminate()
            proc.wait()

print(f"\n| server | concurrency | prompt tokens | output tok/s | TTFT median (s) | per-request tok/s |")
print("|---|---:|---:|---:|---:|---:|")
for name, c, r in rows:
    print(f"| {name} | {c} | {r['prompt']:.0f} | {r['tok_s']:.1f} | {r['ttft']:.2f} | {r['per_req']:.1f} |")
by = {(n, c): r for n, c, r in rows}
for c in concurrencies:
    if ("longctx", c) in by and ("llama-server", c) in by:
        print(f"concurrency {c}: longctx / llama-server output tok/s = "
              f"{by[('longctx', c)]['tok_s'] / by[('llama-server', c)]['tok_s']:.2f}x")
