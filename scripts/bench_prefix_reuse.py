#!/usr/bin/env python3
"""Time to first token of a second question over the same document through `longctx serve`, with prefix reuse
(the default) and with --no-prefix-reuse, in one run on the same machine.

For each setting a server starts; one warm-up request, then for each of --reps rounds: question 1 over the document
(its prompt runs whole: the document differs from the previous round's by a round number at its head) and question 2
over the same document (with reuse only the question runs). TTFT is the time from sending the streamed request to
its first content chunk. With --concurrent N, each round then sends N different questions over another new document
at once: the time until all have their first token, and the KV bytes each held and shared. Prints a Markdown table
(median of the rounds) for BENCHMARKS.md.

Usage: bench_prefix_reuse.py PATH/TO/longctx [--model M] [--doc-chars N] [--reps R] [--threads T] [--kv SPEC]
                             [--concurrent N]
"""
import concurrent.futures
import argparse
import os
import re
import statistics
import subprocess
import time

import openai

p = argparse.ArgumentParser()
p.add_argument("longctx")
p.add_argument("--model", default=os.path.join(os.path.expanduser("~/.cache/longctx"), "SmolLM2-135M-Instruct.Q4_1.gguf"))
p.add_argument("--doc", default=os.path.join(os.path.dirname(__file__), "..", "data", "kjv.txt"))
p.add_argument("--doc-chars", type=int, default=16000, help="characters of the document (~4K tokens for SmolLM2)")
p.add_argument("--reps", type=int, default=3)
p.add_argument("--threads", default=str(os.cpu_count()))
p.add_argument("--ctx", default="8192")
p.add_argument("--kv", default="full")
p.add_argument("--concurrent", type=int, default=0, help="questions over one document sent at once (0: none)")
args = p.parse_args()
QUESTIONS = ["Who is named first?", "Which city is named last?", "Who begat whom?", "What is the first number?",
             "Which river is named?", "Who spoke first?", "What is named in the middle?", "Who is named last?"]

with open(args.doc, encoding="utf-8", errors="replace") as f:
    text = f.read(args.doc_chars + 100000)


def start(extra):
    proc = subprocess.Popen([args.longctx, "serve", "-m", args.model, "--port", "0", "--ctx", args.ctx, "-t",
                             args.threads, "--kv", args.kv, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit("the server did not start")


def ask(client, document, question):
    t0 = time.perf_counter()
    ttft = None
    usage = None
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": document + "\n\nQuestion: " + question}], temperature=0,
        max_tokens=8, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            usage = chunk.usage
    return ttft, usage


def usage_field(u, name):
    return (u.model_extra or {}).get(name, 0) if u is not None else 0


def ask_together(client, document, n):
    """n questions over one document at once: (time until every one has its first token, median KV bytes held,
    median bytes of them shared, median cached tokens)."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda i: ask(client, document, QUESTIONS[i % len(QUESTIONS)] + f" ({i})"), range(n)))
    usages = [u for _, u in answers]
    return (max(t for t, _ in answers), statistics.median(usage_field(u, "kv_bytes_held") for u in usages),
            statistics.median(usage_field(u, "kv_bytes_shared") for u in usages),
            statistics.median(u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0 for u in usages))


rows = []
for label, extra in (("prefix reuse", []), ("--no-prefix-reuse", ["--no-prefix-reuse"])):
    proc, port = start(extra)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        ask(client, "warm-up", "Say hi.")
        first, second, cached, prompt, together = [], [], [], 0, []
        for r in range(args.reps):
            if args.concurrent > 0:
                document = f"Round {r} together.\n" + text[50000 + r * 1000: 50000 + r * 1000 + args.doc_chars]
                together.append(ask_together(client, document, args.concurrent))
            document = f"Round {r}.\n" + text[r * 1000: r * 1000 + args.doc_chars]
            t1, u1 = ask(client, document, "Who is named first?")
            t2, u2 = ask(client, document, "Which city is named last?")
            first.append(t1)
            second.append(t2)
            cached.append(u2.prompt_tokens_details.cached_tokens if u2.prompt_tokens_details else 0)
            prompt = u2.prompt_tokens
        rows.append((label, prompt, statistics.median(first), statistics.median(second), statistics.median(cached),
                     [statistics.median(t[i] for t in together) for i in range(4)] if together else None))
    finally:
        proc.terminate()
        proc.wait()

print(f"| server ({args.kv}, {args.threads} threads) | prompt tokens | TTFT question 1 (s) | TTFT question 2 (s) "
      f"| question 2 cached tokens |")
print("|---|---:|---:|---:|---:|")
for label, prompt, t1, t2, c, _ in rows:
    print(f"| {label} | {prompt} | {t1:.3f} | {t2:.3f} | {c:.0f} |")
if len(rows) == 2:
    print(f"\nquestion 2 TTFT: {rows[1][3] / rows[0][3]:.1f}x faster with reuse")
if args.concurrent > 0:
    print(f"\n| server ({args.kv}, {args.concurrent} questions at once) | time to every first token (s) "
          f"| KV MiB held per request | of it shared | cached tokens per request |")
    print("|---|---:|---:|---:|---:|")
    for label, _, _, _, _, t in rows:
        print(f"| {label} | {t[0]:.3f} | {t[1] / 2**20:.2f} | {t[2] / 2**20:.2f} | {t[3]:.0f} |")
