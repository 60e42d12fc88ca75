#!/usr/bin/env python3
"""Compression at equal memory: `longctx serve` with one fixed KV memory (--kv-memory) under several --kv policies,
N clients at once, each a long different KJV passage and a long answer. The memory a policy saves holds more
requests at once (admission waits for KV pages; the newest running request is recomputed when the pool runs out),
so the decode steps stack more sequences. Reports per policy: output tokens/s over the whole run, the most requests
running at once and the mean decode batch (from /metrics), median time to first token, requests recomputed.

Usage: bench_serve_memory.py --longctx build/release/longctx [--model M] [--kv-memory 160]
           [--policies "full;snapkv:budget=512+kivi:bits=4"] [--clients 16] [--prompt-chars 12000] [--max-tokens 256]
           [--threads 2]
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
ap.add_argument("--model", default=os.path.join(os.path.expanduser("~/.cache/longctx"), "SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--doc", default=os.path.join(os.path.dirname(__file__), "..", "data", "kjv.txt"))
ap.add_argument("--kv-memory", type=float, default=160, help="MiB of KV cache all requests share")
ap.add_argument("--policies", default="full;snapkv:budget=512+kivi:bits=4",
                help="--kv specs separated by ';' (a spec's own options are separated by ',')")
ap.add_argument("--clients", type=int, default=16)
ap.add_argument("--prompt-chars", type=int, default=12000)
ap.add_argument("--max-tokens", type=int, default=256)
ap.add_argument("--threads", default=str(os.cpu_count()))
ap.add_argument("--ctx", type=int, default=8192)
args = ap.parse_args()

with open(args.doc, encoding="utf-8", errors="replace") as f:
    corpus = f.read()


def prompt(i):
    start = (i * 7919 * 13) % (len(corpus) - args.prompt_chars - 1)
    return corpus[start:start + args.prompt_chars] + "\n\nSummarize the passage above."


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def request(port, i):
    body = {"messages": [{"role": "user", "content": prompt(i)}], "temperature": 0, "max_tokens": args.max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, usage = None, {}
    with urllib.request.urlopen(req, timeout=7200) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ttft is None and ev.get("choices") and ev["choices"][0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    return ttft or (time.perf_counter() - t0), usage


rows = []
for policy in args.policies.split(";"):
    cmd = [args.longctx, "serve", "-m", args.model, "--port", "0", "-t", args.threads, "--kv", policy, "--ctx",
           str(args.ctx), "--max-running", str(args.clients), "--max-queue", str(args.clients), "--kv-memory",
           str(args.kv_memory), "--no-prefix-reuse"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in proc.stdout:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise SystemExit("longctx serve did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    try:
        done = False

        def poll():
            most = 0
            while not done:
                most = max(most, metric(metrics(port), "longctx_requests_running"))
                time.sleep(0.2)
            return most

        with cf.ThreadPoolExecutor(1) as pe:
            poller = pe.submit(poll)
            t0 = time.perf_counter()
            try:
                with cf.ThreadPoolExecutor(args.clients) as ex:
                    results = list(ex.map(lambda i: request(port, i), range(args.clients)))
            finally:
                done = True  # a failed request must not leave the poller running (the run would hang)
            wall = time.perf_counter() - t0
            most_running = poller.result()
        text = metrics(port)
        n_out = sum(u.get("completion_tokens", 0) for _, u in results)
        steps = metric(text, "longctx_decode_batch_size_count")
        row = dict(policy=policy, tok_s=n_out / wall, wall=wall, most_running=most_running,
                   mean_batch=metric(text, "longctx_decode_batch_size_sum") / max(1.0, steps),
                   ttft=statistics.median(t for t, _ in results),
                   preempted=metric(text, "longctx_preemptions_total"),
                   kv_held=statistics.median(u.get("kv_bytes_held", 0) for _, u in results) / 2**20,
                   prompt=statistics.median(u.get("prompt_tokens", 0) for _, u in results))
        rows.append(row)
        print(row, flush=True)
    finally:
        proc.terminate()
        proc.wait()

print(f"\nKV memory {args.kv_memory:g} MiB, {args.clients} clients, ~{rows[0]['prompt']:.0f}-token prompts, "
      f"{args.max_tokens}-token answers")
print("| --kv | KV held per request (MiB) | most running | mean decode batch | recomputed | output tok/s | "
      "TTFT median (s) | wall (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| `{r['policy']}` | {r['kv_held']:.1f} | {r['most_running']:.0f} | {r['mean_batch']:.1f} | "
          f"{r['preempted']:.0f} | {r['tok_s']:.1f} | {r['ttft']:.1f} | {r['wall']:.0f} |")
for r in rows[1:]:
    print(f"{r['policy']} / {rows[0]['policy']}: output tok/s {r['tok_s'] / rows[0]['tok_s']:.2f}x")
