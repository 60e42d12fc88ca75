#!/usr/bin/env python3
"""A bounded load test of `longctx serve` on loopback, on SmolLM2: N requests from 16 concurrent clients, a mix of
normal chat and completion requests (streamed or not, under several KV policies), clients that hang up mid-stream,
malformed JSON, bad fields, oversized bodies, prompts over the context and max_tokens over the cap, against a queue
short enough to refuse some (429, retried by the client until served).

Checks: every request gets its expected status (200 / 400 / 413, or 429 then 200); every normal answer is exactly
the one the same request gets alone before the load (greedy, --no-prefix-reuse: an answer is a pure function of its
request, so a mixed or lost response shows); the server is alive at the end, answers /health, and /metrics shows
nothing running or queued and no KV pages in use.

Usage: server_load_test.py PATH/TO/longctx [N]   (N: requests, default 300). Exit 77 when the model is missing.
LONGCTX_SERVE_ARGS adds options to `serve` (e.g. "--device cuda" on a GPU machine).
"""
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

LONGCTX = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
MODEL = os.path.join(os.environ.get("LONGCTX_MODEL_DIR", os.path.expanduser("~/.cache/longctx")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")
CTX, MAX_BODY, MAX_TOKENS, CLIENTS = 512, 16384, 64, 16
QUESTIONS = ["Name a fruit.", "What is 2 + 2?", "Say hello.", "Name a color.", "What is the capital of France?",
             "Count to three.", "Name an animal.", "What day comes after Monday?"]
# LONGCTX_LOAD_POLICIES: comma-separated specs, "none" for the server's default (a device that lacks one).
POLICIES = ([None if p == "none" else p for p in os.environ["LONGCTX_LOAD_POLICIES"].split(",")]
            if os.environ.get("LONGCTX_LOAD_POLICIES") else
            [None, "snapkv:budget=16", "kivi:bits=4", "streaming:budget=24,sink=4"])


def start_server():
    proc = subprocess.Popen([LONGCTX, "serve", "-m", MODEL, "--port", "0", "--ctx", str(CTX), "-t", "2",
                             "--max-queue", "4", "--max-body", str(MAX_BODY), "--max-tokens", str(MAX_TOKENS),
                             "--no-prefix-reuse", *os.environ.get("LONGCTX_SERVE_ARGS", "").split()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
            return proc, int(m.group(1)), log
    proc.kill()
    raise SystemExit("the server did not start:\n" + "".join(log))


def post(port, path, body, stream=False, hang_up_after=None):
    """(status, answer text or error body). A streamed answer is its deltas joined; hang_up_after closes the
    connection after that many bytes of the stream."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200 or not stream:
            data = r.read().decode("utf-8", "replace")
            if r.status != 200:
                return r.status, data
            j = json.loads(data)
            c = j["choices"][0]
            return 200, c["message"]["content"] if "message" in c else c["text"]
        if hang_up_after is not None:
            r.read(hang_up_after)
            return "hung-up", None
        text = ""
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for c in ev.get("choices", []):
                text += c.get("delta", {}).get("content", "") if "delta" in c else c.get("text", "")
        return 200, text
    finally:
        conn.close()


def normal_request(i):
    # Consecutive kinds cycle through endpoint and policy first, so a short run still covers them all.
    chat = i % 2 == 0
    kv = POLICIES[(i // 2) % len(POLICIES)]
    q = QUESTIONS[(i // 3) % len(QUESTIONS)]
    body = {"temperature": 0, "max_tokens": 4 + i % 5}
    if chat:
        body["messages"] = [{"role": "user", "content": q}]
    else:
        body["prompt"] = "Question: " + q + "\nAnswer:"
    if kv:
        body["kv"] = kv
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


def main():
    if not os.path.exists(MODEL):
        print(f"skipped: missing model {MODEL}")
        sys.exit(77)
    proc, port, log = start_server()
    failures = []
    lock = threading.Lock()

    def fail(what):
        with lock:
            failures.append(what)
            print("FAIL: " + what, flush=True)

    # Each distinct normal request alone first: the answers the load must reproduce (fewer kinds for a short run).
    n_kinds = min(len(QUESTIONS) * len(POLICIES) * 2, max(8, N // 4))
    alone = {}
    for i in range(n_kinds):
        path, body = normal_request(i)
        status, text = post(port, path, json.dumps(body))
        if status != 200:
            fail(f"alone request {i}: status {status} {text}")
        alone[i] = text

    rng = random.Random(7)
    every = ["normal", "stream", "hangup", "malformed", "badfield", "oversized", "overctx", "overmax"]
    kinds = every + [rng.choice(["normal"] * 10 + ["stream"] * 4 + ["hangup"] * 2 + every[3:]) for _ in range(N - 8)]
    rng.shuffle(kinds)  # every kind at least once, in a random order
    counts = {}
    refused_429 = [0]

    def one(k):
        kind = kinds[k]
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
        i = k % n_kinds
        path, body = normal_request(i)
        if kind in ("normal", "stream"):
            deadline = time.time() + 600
            while True:
                status, text = post(port, path, json.dumps(dict(body, stream=kind == "stream")), stream=kind == "stream")
                if status != 429 or time.time() > deadline:
                    break
                with lock:
                    refused_429[0] += 1
                time.sleep(0.2 + 0.2 * random.random())  # a refused client waits, as a real one would
            if status != 200:
                fail(f"request {k} ({kind}): status {status} {text}")
            elif text != alone[i]:
                fail(f"request {k} ({kind}): answer {text!r} is not its answer alone {alone[i]!r}")
        elif kind == "hangup":
            status, _ = post(port, path, json.dumps(dict(body, stream=True, max_tokens=MAX_TOKENS)), stream=True,
                             hang_up_after=20)
            if status not in ("hung-up", 429):
                fail(f"request {k} (hangup): status {status}")
        else:
            if kind == "malformed":
                raw, want = json.dumps(body)[:-3] + "]]", 400
            elif kind == "badfield":
                raw, want = json.dumps(dict(body, temperature="hot")), 400
            elif kind == "oversized":
                raw, want = json.dumps(dict(body, prompt="word " * (MAX_BODY // 4))), 413
            elif kind == "overctx":
                raw, want = json.dumps({"prompt": "word " * (CTX + 50), "max_tokens": 4}), 400
            else:
                raw, want = json.dumps(dict(body, max_tokens=MAX_TOKENS + 1)), 400
            status, text = post(port, "/v1/completions" if kind == "overctx" else path, raw)
            if status != want:
                fail(f"request {k} ({kind}): status {status}, want {want}: {text}")
            elif not isinstance(text, str) or '"error"' not in text:
                fail(f"request {k} ({kind}): no OpenAI-style error body: {text}")

    t0 = time.time()
    with ThreadPoolExecutor(CLIENTS) as ex:
        for f in [ex.submit(one, k) for k in range(N)]:
            try:
                f.result()
            except Exception as e:  # a client that raised is a failure, not a crash of the test
                fail(f"client raised {type(e).__name__}: {e}")
    print(f"{N} requests from {CLIENTS} clients in {time.time() - t0:.1f} s: {dict(sorted(counts.items()))}, "
          f"{refused_429[0]} refused with 429 and retried", flush=True)

    # The end state: alive, idle, every page back.
    if proc.poll() is not None:
        fail(f"the server exited with {proc.returncode}:\n" + "".join(log[-20:]))
    else:
        deadline = time.time() + 60
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            m = {k: float(v) for k, v in re.findall(r"^(longctx_\w+) (\S+)$", text, re.M)}
            idle = m.get("longctx_requests_running") == 0 and m.get("longctx_queue_length") == 0
            if (idle and m.get("longctx_kv_pages_in_use") == 0) or time.time() > deadline:
                break
            time.sleep(0.2)
        for name in ("longctx_requests_running", "longctx_queue_length", "longctx_kv_pages_in_use"):
            if m.get(name) != 0:
                fail(f"{name} is {m.get(name)} after the load, want 0")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        if conn.getresponse().status != 200:
            fail("/health after the load")
        conn.close()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail("the server did not exit on SIGTERM")
    if any("AddressSanitizer" in l or "runtime error" in l for l in log):
        fail("sanitizer report:\n" + "".join(l for l in log if "Sanitizer" in l or "runtime error" in l))
    print(("FAILED: %d" % len(failures)) if failures else "ok", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
