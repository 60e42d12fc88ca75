#!/usr/bin/env python3
"""Compression at equal memory: `longctx serve` with one fixed KV memory (--kv-memory) under several --kv policies,
N clients at once, each a long different KJV passage and a long answer. The memory a policy saves holds more
requests at once (admission waits for KV pages; the newest running request is recomputed when the pool runs out),
so the decode steps stack more sequences. Reports per policy: output tokens/s over the whole run, the most requests
running at once and the mean decode batch (from /metrics), median time to first token, requests recomputed.

With --llama-server, llama.cpp's `llama-server` runs beside it at the same KV memory, once per --llama-kv-types type
(f16, q8_0, q4_0: its own KV quantizations). llama-server reserves a slot's whole context up front, so the memory
buys slots = floor(tokens / ctx-per-request), where tokens = floor(--kv-memory MiB / KV bytes per token), KV bytes
per token = n_layer * n_kv_head * head_dim * 2 (K and V) * bytes per element (f16 2, q8_0 34/32, q4_0 18/32; the
shape from `longctx info`), and ctx-per-request = the longest prompt as llama-server tokenizes it (its chat template,
/apply-template then /tokenize on a sizing server) plus --max-tokens, rounded up to 256 (llama.cpp pads a slot's
context to 256; --llama-ctx-per-request sets it instead). It runs `-np slots -c slots*ctx-per-request -ctk T -ctv T
-fa on -b 512 -ub 512 --no-cache-prompt --cache-ram 0 --no-kv-unified --fit off --metrics` with --threads threads
(-t and -tb). The same clients send it the same prompts (greedy, streamed, ignore_eos, --max-tokens); requests beyond its slots
wait in its queue. Its "most running" is the peak of llamacpp:requests_processing, its "mean decode batch" is
llamacpp:n_busy_slots_per_decode (busy slots per llama_decode call, prompt chunks included), its "KV held per
request" is (prompt + answer tokens) * KV bytes per token. The script prints the KV size llama-server reports and
each longctx policy's ratio to each llama-server row: most running and output tok/s. (Sliding-window models: the
per-token bytes count every layer at full context, which llama-server's SWA layers do not hold.) llama-server is
built for the CPU from the llama-cpp-python==0.3.36 sdist's vendor/llama.cpp as scripts/bench_server.py says, adding
-DCMAKE_C_FLAGS/-DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" (its AMX matmul crashes on this machine).
--policies "" runs llama-server alone; an entry "SPEC --kv-prefill-compress" passes the flags after the spec to that
policy's server.

Usage: bench_serve_memory.py --longctx build/release/longctx [--model M] [--kv-memory 160]
           [--policies "full;snapkv:budget=512+kivi:bits=4"] [--clients 16] [--prompt-chars 12000] [--max-tokens 256]
           [--threads 2] [--llama-server LLAMA_BUILD/bin/llama-server [--llama-kv-types "f16;q8_0;q4_0"]
           [--llama-ctx-per-request N]]
e.g. the issue-16 run (16 concurrent ~6K-token requests at 320 MiB):
    bench_serve_memory.py --longctx build/release/longctx --llama-server /work/llama-build/bin/llama-server \
        --kv-memory 320 --clients 16 --prompt-chars 24000 --max-tokens 512 \
        --policies "full;chunkkv:budget=512+kivi:bits=4" --threads 2
"""
import argparse
import concurrent.futures as cf
import json
import math
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
ap.add_argument("--ctx", type=int, default=8192, help="longctx serve's --ctx")
ap.add_argument("--llama-server", help="llama.cpp's llama-server binary: adds its rows at the same KV memory")
ap.add_argument("--llama-kv-types", default="f16;q8_0;q4_0", help="llama-server -ctk/-ctv types separated by ';'")
ap.add_argument("--llama-ctx-per-request", type=int, default=0,
                help="llama-server's context per slot (default: the longest prompt plus --max-tokens, rounded up to 256)")
args = ap.parse_args()

KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # bytes per element: ggml's block sizes

with open(args.doc, encoding="utf-8", errors="replace") as f:
    corpus = f.read()


def prompt(i):
    start = (i * 7919 * 13) % (len(corpus) - args.prompt_chars - 1)
    return corpus[start:start + args.prompt_chars] + "\n\nSummarize the passage above."


def messages(i):
    return [{"role": "user", "content": prompt(i)}]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def start_server(cmd):
    """Starts a server that prints 'listening on http://127.0.0.1:PORT' once it serves; returns it, its port and
    the log up to then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            # Keep draining the log: a server blocked on a full pipe would stall the benchmark.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(m.group(1)), "".join(log)
    proc.wait()
    raise SystemExit(f"{cmd[0]} did not start:\n" + "".join(log[-20:]))


def request(port, i):
    body = {"messages": messages(i), "temperature": 0, "max_tokens": args.max_tokens,
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


def bench(port, running_metric):
    """All clients at once; the most requests running at once is polled from /metrics meanwhile."""
    done = False

    def poll():
        most = 0
        while not done:
            try:
                most = max(most, metric(metrics(port), running_metric))
            except OSError:  # a busy server (llama-server between long prompt batches) may not answer in time
                pass
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
    n_out = [u.get("completion_tokens", 0) for _, u in results]
    if min(n_out) < args.max_tokens:
        print(f"warning: {sum(n < args.max_tokens for n in n_out)} requests got fewer than {args.max_tokens} tokens",
              flush=True)
    return results, dict(tok_s=sum(n_out) / wall, wall=wall, most_running=most_running,
                         ttft=statistics.median(t for t, _ in results),
                         prompt=statistics.median(u.get("prompt_tokens", 0) for _, u in results))


rows = []
for entry in [p for p in args.policies.split(";") if p.strip()]:
    policy, *serve_flags = entry.split()  # "SPEC --kv-prefill-compress": flags for that server
    cmd = [args.longctx, "serve", "-m", args.model, "--port", "0", "-t", args.threads, "--kv", policy, "--ctx",
           str(args.ctx), "--max-running", str(args.clients), "--max-queue", str(args.clients), "--kv-memory",
           str(args.kv_memory), "--no-prefix-reuse", *serve_flags]
    proc, port, _ = start_server(cmd)
    try:
        results, row = bench(port, "longctx_requests_running")
        text = metrics(port)
        steps = metric(text, "longctx_decode_batch_size_count")
        row.update(server="longctx", kv=f"`{entry.strip()}`",
                   mean_batch=metric(text, "longctx_decode_batch_size_sum") / max(1.0, steps),
                   preempted=f"{metric(text, 'longctx_preemptions_total'):.0f}",
                   kv_held=statistics.median(u.get("kv_bytes_held", 0) for _, u in results) / 2**20)
        rows.append(row)
        print(row, flush=True)
    finally:
        proc.terminate()
        proc.wait()

llama_rows = []
if args.llama_server:
    info = subprocess.run([args.longctx, "info", args.model], capture_output=True, text=True, check=True).stdout
    n_layer = int(re.search(r"^layers:\s+(\d+)", info, re.M).group(1))
    n_head_kv, head_dim = map(int, re.search(r"^heads:\s+\d+ query, (\d+) kv, head dim (\d+)", info, re.M).groups())
    ctx_per_request = args.llama_ctx_per_request
    if ctx_per_request <= 0:
        # The prompts as llama-server's chat template and tokenizer make them (a server with one small slot).
        proc, port, _ = start_server([args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", "0",
                                      "-t", args.threads, "-np", "1", "-c", "256", "--fit", "off", "--no-ui"])
        try:
            longest = max(len(post(port, "/tokenize", {"content": post(port, "/apply-template", {"messages": messages(i)})
                                                       ["prompt"], "add_special": True})["tokens"])
                          for i in range(args.clients))
        finally:
            proc.terminate()
            proc.wait()
        ctx_per_request = math.ceil((longest + args.max_tokens) / 256) * 256
        print(f"llama-server context per request: {ctx_per_request} (longest prompt {longest} tokens + "
              f"{args.max_tokens} answer tokens, rounded up to 256)", flush=True)
    for kv_type in [t for t in args.llama_kv_types.split(";") if t]:
        per_token = n_layer * n_head_kv * head_dim * 2 * KV_TYPE_BYTES[kv_type]
        tokens = math.floor(args.kv_memory * 2**20 / per_token)
        slots = tokens // ctx_per_request
        print(f"llama-server {kv_type}: {per_token:.0f} KV bytes per token ({n_layer} layers x {n_head_kv} kv heads x "
              f"{head_dim} x 2), {tokens} tokens in {args.kv_memory:g} MiB -> {slots} slots of {ctx_per_request}",
              flush=True)
        row = dict(server="llama-server", kv=f"`{kv_type}`, {slots} slots x {ctx_per_request}", kv_type=kv_type)
        if slots < 1:
            print(f"llama-server {kv_type}: {args.kv_memory:g} MiB cannot hold one request of {ctx_per_request} tokens",
                  flush=True)
            llama_rows.append(row)
            continue
        cmd = [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", "0", "-t", args.threads,
               "-tb", args.threads, "-np", str(slots), "-c", str(slots * ctx_per_request), "-fa", "on",
               "-ctk", kv_type, "-ctv", kv_type, "-b", "512", "-ub", "512", "--no-cache-prompt", "--cache-ram", "0",
               "--no-kv-unified", "--fit", "off", "--metrics", "--no-ui", "-lv", "4"]  # -lv 4: it logs its KV size
        proc, port, log = start_server(cmd)
        try:
            m = re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*\d+ layers,\s*(\d+)/", log)
            print(f"llama-server {kv_type}: its KV cache " +
                  (f"{m.group(1)} MiB ({m.group(3)} slots x {m.group(2)} cells)" if m else "size not in its log"),
                  flush=True)
            results, r = bench(port, "llamacpp:requests_processing")
            text = metrics(port)
            row.update(r, mean_batch=metric(text, "llamacpp:n_busy_slots_per_decode"), preempted="-",
                       kv_held=statistics.median(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
                                                 for _, u in results) * per_token / 2**20)
            llama_rows.append(row)
            print(row, flush=True)
        finally:
            proc.terminate()
            proc.wait()

ran = [r for r in rows + llama_rows if "tok_s" in r]
print(f"\nKV memory {args.kv_memory:g} MiB, {args.clients} clients, "
      f"~{ran[0]['prompt'] if ran else 0:.0f}-token prompts, {args.max_tokens}-token answers")
print("| server | KV | KV held per request (MiB) | most running | mean decode batch | recomputed | output tok/s | "
      "TTFT median (s) | wall (s) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows + llama_rows:
    if "tok_s" not in r:
        print(f"| {r['server']} | {r['kv']} | - | 0 (cannot hold one request) | - | - | - | - | - |")
        continue
    print(f"| {r['server']} | {r['kv']} | {r['kv_held']:.1f} | {r['most_running']:.0f} | {r['mean_batch']:.1f} | "
          f"{r['preempted']} | {r['tok_s']:.1f} | {r['ttft']:.1f} | {r['wall']:.0f} |")
for r in rows[1:]:
    print(f"{r['kv']} / {rows[0]['kv']}: output tok/s {r['tok_s'] / rows[0]['tok_s']:.2f}x")
for r in rows:
    for g in llama_rows:
        if "tok_s" in g:
            print(f"longctx {r['kv']} / llama-server {g['kv_type']}: most running "
                  f"{r['most_running'] / max(1.0, g['most_running']):.2f}x, output tok/s {r['tok_s'] / g['tok_s']:.2f}x")
