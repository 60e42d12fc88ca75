#!/usr/bin/env python3
"""`longctx serve` end to end with the real `openai` Python client, on SmolLM2.

Starts the server on a free port (--port 0, the bound port read from its log) and checks: chat and completions,
streamed and not; a greedy answer identical to `longctx run --temp 0` of the same prompt; logprobs; a per-request
KV policy (fewer bytes held, reported in usage) and a bad one (400 with the registry's message); malformed,
oversized, unauthorized and over-the-context requests (400/413/401); a stream the client drops (cancelled, its KV
pages freed); 8 concurrent requests each answered exactly as when alone; /metrics in Prometheus' text format; a full
queue (429) and shutdown on SIGTERM with requests in flight.

Usage: server_openai_e2e_test.py PATH/TO/longctx. Exit 77 (skipped) only when python3's `openai` is missing.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

try:
    import openai
except ImportError:
    print("skipped: the openai Python package is missing (scripts/setup.sh installs it)")
    sys.exit(77)

LONGCTX = sys.argv[1]
MODEL = os.path.join(os.environ.get("LONGCTX_MODEL_DIR", os.path.expanduser("~/.cache/longctx")),
                     "SmolLM2-135M-Instruct.Q4_1.gguf")
KEY = "test-key"
CTX = 1024
THREADS = "2"
failures = []
SERVERS = []  # killed at exit, whatever happened


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


class Server:
    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [LONGCTX, "serve", "-m", MODEL, "--port", "0", "--ctx", str(CTX), "-t", THREADS, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        SERVERS.append(self.proc)
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            raise SystemExit("the server did not start:\n" + "".join(self.log))
        # Keep draining the log so the server never blocks on a full pipe.
        self.reader = threading.Thread(target=lambda: self.log.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    def client(self, **kw):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=kw.pop("api_key", KEY), **kw)

    def raw(self, method, path, body=None, headers=None):
        """(status, parsed JSON or text) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        conn.close()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data

    def metrics(self):
        status, text = self.raw("GET", "/metrics")
        assert status == 200, (status, text)
        return parse_prometheus(text)


def parse_prometheus(text):
    """{(name, labels-string): value}; raises on a line that is not the text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# ") and not re.match(r"# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+", line):
                raise ValueError("bad comment line: " + line)
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="[^"]*",?)*\})? (\S+)', line)
        if not m:
            raise ValueError("bad sample line: " + line)
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric(ms, name, labels=""):
    return ms.get((name, labels), 0.0)


def longctx_run(prompt, n, chat):
    cmd = [LONGCTX, "run", "-m", MODEL, "-p", prompt, "--temp", "0", "-n", str(n), "--ctx", str(CTX), "-t", THREADS,
           "-q"] + (["--chat"] if chat else [])
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8")
    assert out.endswith("\n")
    return out[:-1]  # run ends the answer with a newline


def main():
    if not os.path.exists(MODEL):
        raise SystemExit(f"missing model {MODEL}: run scripts/setup.sh")
    t0 = time.time()
    srv = Server("--api-key", KEY, "--max-body", "65536", "--max-tokens", "600", "--max-queue", "16")
    c = srv.client(max_retries=0, timeout=120)

    # /v1/models and /health.
    models = c.models.list()
    check(len(models.data) == 1 and models.data[0].id == "SmolLM2-135M-Instruct.Q4_1", "/v1/models lists the model")
    check(srv.raw("GET", "/health", headers={"Authorization": ""})[0] == 200, "/health answers without the key")

    # Chat, not streamed, greedy: the same answer as `longctx run --chat --temp 0`.
    question = "What is the capital of France? Answer in one sentence."
    r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}], temperature=0,
                                  max_tokens=24)
    want = longctx_run(question, 24, chat=True)
    check(r.choices[0].message.content == want,
          f"chat greedy answer equals longctx run's: {r.choices[0].message.content!r} vs {want!r}")
    check(r.object == "chat.completion" and r.model == "smol" and r.choices[0].finish_reason in ("stop", "length"),
          "chat response shape")
    check(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10, "chat usage counts tokens")

    # The same, streamed: deltas add up to the same text; the usage chunk comes last.
    chunks = list(c.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}],
                                            temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == want, f"chat streamed text equals the non-streamed one: {text!r}")
    check(chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
    check(chunks[-1].usage is not None and not chunks[-1].choices
          and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "include_usage: a last usage chunk")
    check(any(ch.choices and ch.choices[0].finish_reason == r.choices[0].finish_reason for ch in chunks),
          "the stream gives the finish reason")

    # Completions, greedy, not streamed and streamed, against `longctx run` without --chat.
    prompt = "The capital of France is"
    want = longctx_run(prompt, 16, chat=False)
    r = c.completions.create(model="smol", prompt=prompt, temperature=0, max_tokens=16)
    check(r.choices[0].text == want, f"completion greedy text equals longctx run's: {r.choices[0].text!r} vs {want!r}")
    text = "".join(ch.choices[0].text for ch in c.completions.create(model="smol", prompt=prompt, temperature=0,
                                                                     max_tokens=16, stream=True))
    check(text == want, "completion streamed text equals it too")

    # Sampling with a seed is repeatable; stop strings end the text before them.
    kw = dict(model="smol", prompt="Once upon a time", temperature=0.9, top_p=0.9, seed=7, max_tokens=20,
              extra_body={"top_k": 40, "min_p": 0.05})
    a, b = c.completions.create(**kw).choices[0].text, c.completions.create(**kw).choices[0].text
    check(a == b, "the same seed gives the same sampled text")
    r = c.completions.create(model="smol", prompt="1, 2, 3, 4,", temperature=0, max_tokens=30, stop=[" 7"])
    check(r.choices[0].finish_reason == "stop" and " 7" not in r.choices[0].text and r.choices[0].text.endswith("6,"),
          f"stop string: {r.choices[0].text!r}")

    # Logprobs: greedy picks the most likely token, which tops its own alternatives.
    r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}], temperature=0,
                                  max_tokens=5, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check(len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp), "logprobs per token")
    check(all(t.token == t.top_logprobs[0].token and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6
              and t.logprob <= 0 for t in lp), "greedy tokens are their step's most likely")

    # A KV policy per request: SnapKV at a budget of 32 holds less than the full cache, and says so in usage.
    doc = " ".join(f"Item {i} is a {['red', 'blue', 'green'][i % 3]} box." for i in range(60))
    msgs = [{"role": "user", "content": doc + " What colour is item 7?"}]
    full = c.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=4)
    snap = c.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=4,
                                     extra_body={"kv": "snapkv:budget=32"})
    fu, su = full.usage.model_extra, snap.usage.model_extra
    check(su["kv_bytes_held"] < fu["kv_bytes_held"] / 4 and su["kv_bytes_saved"] > 0 and fu["kv_bytes_full"] > 0,
          f"kv snapkv:budget=32 holds {su['kv_bytes_held']} bytes against the full cache's {fu['kv_bytes_held']}")
    try:
        c.chat.completions.create(model="smol", messages=msgs, max_tokens=2, extra_body={"kv": "nonsense:x=1"})
        check(False, "a bad kv spec is refused")
    except openai.BadRequestError as e:
        err = e.body
        check(e.status_code == 400 and err["param"] == "kv" and "unknown KV policy" in err["message"],
              f"a bad kv spec is a 400 with the registry's message: {err['message'][:80]}")

    # Bad requests: malformed JSON, a wrong field, too large, no key, over the context.
    st, body = srv.raw("POST", "/v1/chat/completions", body='{"messages": [')
    check(st == 400 and set(body["error"]) == {"message", "type", "param", "code"}, "malformed JSON: 400, OpenAI body")
    st, body = srv.raw("POST", "/v1/chat/completions",
                       body=json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}))
    check(st == 400 and body["error"]["param"] == "temperature", "a mistyped field: 400 naming it")
    st, body = srv.raw("POST", "/v1/completions", body=json.dumps({"prompt": "x" * 100000}))
    check(st == 413 and body["error"]["code"] == "body_too_large", f"oversized body: {st}")
    try:
        srv.client(api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "a wrong key: 401")
    check(srv.raw("GET", "/v1/models", headers={"Authorization": ""})[0] == 401, "no key: 401")
    try:
        c.completions.create(model="smol", prompt="word " * 3000, max_tokens=4)
        check(False, "a prompt over the context is refused")
    except openai.BadRequestError as e:
        m = e.body["message"]
        check(e.body["code"] == "context_length_exceeded" and str(CTX) in m and "3001" in m,
              f"prompt over the context: 400 with the counts ({m[:70]})")
    try:
        c.completions.create(model="smol", prompt="hi", max_tokens=601)
        check(False, "max_tokens over the cap is refused")
    except openai.BadRequestError as e:
        check(e.body["param"] == "max_tokens", "max_tokens over --max-tokens: 400")
    check(srv.raw("GET", "/nowhere")[0] == 404, "an unknown path: 404")

    # A stream the client drops: the job is cancelled and its pages go back.
    before = srv.metrics()
    stream = c.completions.create(model="smol", prompt="1, 2, 3, 4, 5,", temperature=0, max_tokens=500, stream=True)
    got = 0
    for _ in stream:
        got += 1
        if got == 3:
            break
    stream.close()
    deadline, ms = time.time() + 30, None
    while time.time() < deadline:
        ms = srv.metrics()
        if (metric(ms, "longctx_generations_finished_total", '{reason="cancelled"}')
                > metric(before, "longctx_generations_finished_total", '{reason="cancelled"}')
                and metric(ms, "longctx_requests_running") == 0):
            break
        time.sleep(0.1)
    gen = metric(ms, "longctx_generated_tokens_total") - metric(before, "longctx_generated_tokens_total")
    check(metric(ms, "longctx_generations_finished_total", '{reason="cancelled"}')
          == metric(before, "longctx_generations_finished_total", '{reason="cancelled"}') + 1
          and gen < 400, f"a dropped stream is cancelled after {gen:.0f} of 500 tokens")
    check(metric(ms, "longctx_kv_pages_in_use") == 0 and metric(ms, "longctx_kv_pages_free") > 0,
          "its KV pages are freed")

    # 8 concurrent requests, each with its own prompt and policy: each answer is what it is alone.
    prompts = [f"List {k} animals:" for k in range(2, 10)]
    policies = ["full", "snapkv:budget=16", "streaming:budget=16,sink=4", "kivi:bits=4"] * 2
    alone = [c.completions.create(model="smol", prompt=p, temperature=0, max_tokens=12,
                                  extra_body={"kv": k}).choices[0].text for p, k in zip(prompts, policies)]
    together = [None] * len(prompts)

    def worker(i):
        together[i] = srv.client(max_retries=0, timeout=300).completions.create(
            model="smol", prompt=prompts[i], temperature=0, max_tokens=12,
            extra_body={"kv": policies[i]}).choices[0].text
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(together == alone, "8 concurrent requests: every answer equals its answer alone")

    # /metrics parses and counts what happened.
    ms = srv.metrics()
    check(metric(ms, "longctx_requests_total", '{endpoint="chat/completions",code="200"}') == 5
          and metric(ms, "longctx_requests_total", '{endpoint="health",code="200"}') == 1
          and metric(ms, "longctx_requests_total", '{endpoint="completions",code="413"}') == 1
          and metric(ms, "longctx_time_to_first_token_seconds_count") > 10
          and metric(ms, "longctx_time_per_output_token_seconds_count") > 50
          and metric(ms, "longctx_time_to_first_token_seconds_bucket", '{le="+Inf"}')
          == metric(ms, "longctx_time_to_first_token_seconds_count")
          and metric(ms, "longctx_queue_length") == 0, "/metrics parses and counts requests, tokens, latencies")

    srv.proc.send_signal(signal.SIGTERM)
    check(srv.proc.wait(timeout=30) == 0, "SIGTERM: the server exits 0")

    # A full queue: with one request running and room for one waiting, the third at once is a 429; a shutdown with
    # requests in flight answers them all and exits 0.
    small = Server("--max-queue", "1", "--max-running", "1")
    results = [None] * 3

    def long_request(i):
        try:
            r = small.client(max_retries=0, timeout=120).completions.create(
                model="smol", prompt="1, 2, 3,", temperature=0, max_tokens=300)
            results[i] = r.choices[0].finish_reason
        except openai.APIStatusError as e:
            results[i] = e.status_code
    ts = []
    for i in range(3):
        ts.append(threading.Thread(target=long_request, args=(i,)))
        ts[-1].start()
        time.sleep(0.3)  # in order: the first runs, the second waits, the third finds the queue full
    ts[2].join()
    check(results[2] == 429, f"a full queue: 429 (got {results[2]})")
    small.proc.send_signal(signal.SIGTERM)
    rc = small.proc.wait(timeout=30)
    for t in ts:
        t.join()
    check(rc == 0 and all(x is not None for x in results), f"SIGTERM with requests in flight: exit {rc}, all "
          f"answered ({results})")

    print(f"{time.time() - t0:.1f}s")
    if failures:
        print(f"{len(failures)} failed: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        for p in SERVERS:
            if p.poll() is None:
                p.kill()
                p.wait()
    sys.exit(rc)
