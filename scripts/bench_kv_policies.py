#!/usr/bin/env python3
"""KV policies on a passkey prompt: the answer, the KV bytes held and decode speed per policy (issue 4).

The prompt is the passkey task of "Landmark Attention: Random-Access Infinite Context Length for Transformers":
a key sentence hidden at a given depth in filler text, then the question. Filler is the King James Bible
(Debian bible-kjv), verse text only, so the haystack is reproducible and public domain.

  scripts/bench_kv_policies.py table  [--binary B] [--model M] [--tokens 6000] [--budget 1024] [--heads F] [--reps 2]
  scripts/bench_kv_policies.py prompt --tokens 32000 --out p.txt      # only writes the prompt (for other runs)

`table` runs `longctx run` once per policy and repetition and prints a markdown table; the KV bytes are those
that `run` prints from the store (pages plus metadata, what the allocator holds), decode tokens/s the best of the
repetitions (the machine is shared: the best is the least disturbed run).
Bytes per token: KV bytes over the prompt's tokens.
"""
import argparse
import json
import os
import re
import subprocess
import sys

KEY = "68315"
QUESTION = "What is the pass key? Answer with the number only."
INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about it.\n\n")
# Chars per token of the filler, measured on SmolLM2's tokenizer (Gemma's is close); only sizes the haystack,
# `run` reports the true count.
CHARS_PER_TOKEN = 4.1


def filler_verses():
    out = subprocess.run(["bible", "-l10000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    verses = []
    for line in out.splitlines():
        m = re.match(r"\s+\d+ (.*)", line)
        if m:
            verses.append(m.group(1).strip())
    return verses


def make_prompt(n_tokens, depth, key=KEY):
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    budget = int(n_tokens * CHARS_PER_TOKEN) - len(INTRO) - len(needle) - len(QUESTION) - 8
    text, n = [], 0
    for v in filler_verses():
        if n + len(v) + 1 > budget:
            break
        text.append(v)
        n += len(v) + 1
    at = int(len(text) * depth)
    return INTRO + " ".join(text[:at]) + needle + " ".join(text[at:]) + "\n\n" + QUESTION


def run_one(binary, model, prompt_file, kv, extra, n_predict=12):
    cmd = [binary, "run", "-m", model, "--file", prompt_file, "--chat", "--temp", "0", "-n", str(n_predict),
           "--kv", kv] + extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr}")
    err = p.stderr
    kv_line = re.search(r"kv:\s+.* held \((.*) pages \+ (.*) metadata\) for (\d+) tokens; full f16 cache: ([^(]*)", err)
    dec = re.search(r"decode:\s+(\d+) tokens in ([\d.]+)s \(([\d.]+) tok/s\)", err)
    pre = re.search(r"prefill: (\d+) tokens in ([\d.]+)s", err)
    pool = re.search(r"kv pool: (.*) held now, (.*) at peak \(sequence peak (.*)\); process peak RSS (.*)", err)
    return {
        "pool_bytes": to_bytes(pool.group(1)),
        "pool_peak": to_bytes(pool.group(2)),
        "peak_rss": to_bytes(pool.group(4)),
        "answer": p.stdout.strip(),
        "bytes": to_bytes(kv_line.group(1)) + to_bytes(kv_line.group(2)),
        "full_f16": to_bytes(kv_line.group(4).strip()),
        "n_prompt": int(pre.group(1)),
        "tg": float(dec.group(3)),
        "prefill_s": float(pre.group(2)),
    }


def to_bytes(s):
    v, unit = s.strip().split()
    return float(v) * {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]


def human(b):
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def table(args):
    here = os.path.dirname(os.path.abspath(__file__))
    prompt_file = os.path.join(args.workdir, f"passkey_{args.tokens}.txt")
    os.makedirs(args.workdir, exist_ok=True)
    with open(prompt_file, "w") as f:
        f.write(make_prompt(args.tokens, args.depth))
    b = args.budget
    # The two of the headline ratio first: on a slow machine a partial table still has them.
    # (name, --kv, extra run arguments); the last row bounds the peak too, by cutting after every prefill chunk.
    policies = [
        ("full (f16)", "full", []),
        ("snapkv+kivi 2 bit", f"snapkv:budget={b}+kivi:bits=2", []),
        ("snapkv", f"snapkv:budget={b}", []),
        ("streaming", f"streaming:budget={b}", []),
        ("h2o", f"h2o:budget={b}", []),
        ("tova", f"tova:budget={b}", []),
        ("pyramid+snapkv", f"pyramid:budget={b}+snapkv", []),
        ("kivi 2 bit", "kivi:bits=2", []),
        ("kivi 4 bit", "kivi:bits=4", []),
        ("snapkv+kivi 2 bit, compressed while prefilling", f"snapkv:budget={b}+kivi:bits=2", ["--kv-prefill-compress"]),
    ]
    if args.heads:
        policies.append(("heads (calibrated)+kivi 4 bit", f"heads:file={args.heads}+kivi:bits=4", []))
    # Every run is appended to a JSON-lines log as it ends, so --print-only can tabulate an interrupted run.
    log = os.path.join(args.workdir, "runs.jsonl")
    if not args.print_only:
        for rep in range(args.reps):
            for name, kv, extra in policies:
                r = run_one(args.binary, args.model, prompt_file, kv,
                            extra + (["-t", str(args.threads)] if args.threads else []))
                r["kv"] = name
                print(f"[{rep}] {kv}: {r['answer']!r} {human(r['bytes'])} {r['tg']:.1f} tok/s", file=sys.stderr)
                with open(log, "a") as f:
                    f.write(json.dumps(r) + "\n")
    rows = {}
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            if r["kv"] in rows:
                rows[r["kv"]]["tg"] = max(rows[r["kv"]]["tg"], r["tg"])
                rows[r["kv"]]["n_runs"] += 1
            else:
                rows[r["kv"]] = dict(r, n_runs=1)
    policies = [(n, kv, extra) for n, kv, extra in policies if n in rows]
    rows = {n: rows[n] for n, _, _ in policies}
    n_prompt = next(iter(rows.values()))["n_prompt"]
    print(f"Passkey {KEY} at depth {args.depth:.0%} of a {n_prompt}-token prompt, budget {b} tokens, "
          f"up to {max(r['n_runs'] for r in rows.values())} runs per policy (decode: the best).\n")
    print("| policy | --kv | KV bytes held at the end | pool held at the end | pool peak | process peak RSS "
          "| answer correct | decode tok/s | runs |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for name, kv, extra in policies:
        r = rows[name]
        ok = "yes" if KEY in r["answer"] else f"no ({r['answer'][:30]!r})"
        print(f"| {name} | `{kv}`{' ' + ' '.join(extra) if extra else ''} | {human(r['bytes'])} | "
              f"{human(r['pool_bytes'])} | {human(r['pool_peak'])} | {human(r['peak_rss'])} | {ok} | {r['tg']:.1f} | "
              f"{r['n_runs']} |")
    if "full (f16)" not in rows or "snapkv+kivi 2 bit" not in rows:
        return
    full, small = rows["full (f16)"], rows["snapkv+kivi 2 bit"]
    print(f"\nfull f16 bytes / snapkv+kivi2 bytes at the end: {full['bytes'] / small['bytes']:.1f}x; pool peak: "
          f"{full['pool_peak'] / small['pool_peak']:.2f}x; process peak RSS: {full['peak_rss'] / small['peak_rss']:.2f}x; "
          f"decode snapkv+kivi2 / full: {small['tg'] / full['tg']:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--binary", default="build/release/longctx")
    t.add_argument("--model", default=os.path.expanduser("~/.cache/longctx/SmolLM2-135M-Instruct.Q4_1.gguf"))
    t.add_argument("--tokens", type=int, default=6000)
    t.add_argument("--depth", type=float, default=0.5)
    t.add_argument("--budget", type=int, default=1024)
    t.add_argument("--heads", default="")
    t.add_argument("--reps", type=int, default=2)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--workdir", default="/tmp/longctx_bench_kv")
    t.add_argument("--print-only", action="store_true", help="tabulate the runs already logged in --workdir")
    p = sub.add_parser("prompt")
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "table":
        table(a)
    else:
        with open(a.out, "w") as f:
            f.write(make_prompt(a.tokens, a.depth))


if __name__ == "__main__":
    main()
