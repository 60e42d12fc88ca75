#!/usr/bin/env python3
"""The KV-compression quality table: every method at several compression ratios of real KV bytes, on the same
`longctx eval` prompts, the question inside the compressed context and read after compression.

usage: scripts/quality_table.py -m MODEL.gguf -o OUT_DIR [--lengths 4k,8k] [--ratios 2,4,8,20]
                                [--tasks needle,multikey] [--depths 0.25,0.5,0.75] [--seeds 1] [--threads 2]
                                [--device cpu|cuda]
                                [--methods NAME,...] [--modes inside,after] [--table-only]

Each method is a --kv template whose token budget is a fraction of each case's length; a method that also packs
bits keeps more tokens for the same bytes (budget = 1 / (ratio * bytes_per_token_vs_f16)). The ratio in a cell is
the one the store measured (f16 bytes of the full cache over the bytes held after compression), not the target.
One `longctx eval` run per (length, mode) holds every policy, so all see the same prompts. A run whose JSON already
exists is reused (--table-only reads only); one that a time limit cut off (eval writes its JSON after every case)
goes on where it stopped: the (task, depth) pairs that lack a policy run again and their cases replace the partial
ones. Prints a markdown table per (length, mode) and writes it to
OUT_DIR/quality_table.md. A cell reads "needle multikey (ratio, =k/n)": correct cases per task, then the measured
ratio and in how many cases the answer's number is the full cache's (the full cache's own mistakes included). With
the ppl task (--tasks needle,multikey,ppl) a cell also gives the perplexity of the text after a prefix compressed by
the policy, as its change against the full cache's (the full row: the perplexity itself).
"""
import argparse
import json
import math
import re
import os
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction

# name -> (template with {budget}, bytes per kept token against f16 (1.0 for f16 pages); None: the method keeps
# every token and compresses by bits alone, so it appears only at the ratio its bits give.
METHODS = {
    "snapkv": ("snapkv:budget={budget}", 1.0),
    # ChunkKV's fixed chunks of 20 (the paper's, kvpress's), and chunks that end between sentences (the engine's
    # default) or words, the text's boundaries coming from the tokenizer.
    "chunkkv": ("chunkkv:budget={budget},align=none", 1.0),
    "chunkkv-sentence": ("chunkkv:budget={budget},align=sentence", 1.0),
    "chunkkv-word": ("chunkkv:budget={budget},align=word", 1.0),
    "adakv": ("snapkv:budget={budget}+adakv", 1.0),
    "pyramid": ("pyramid:budget={budget}+snapkv", 1.0),
    "tova": ("tova:budget={budget}", 1.0),
    "h2o": ("h2o:budget={budget}", 1.0),
    "streaming": ("streaming:budget={budget}", 1.0),
    "expected": ("expected:budget={budget}", 1.0),
    "kvzip": ("kvzip:budget={budget},alloc=global", 1.0),
    # 4-bit KIVI keeps a page of 64 tokens in about 0.3 of its f16 bytes (codes plus f16 scales and mins).
    "chunkkv+kivi4": ("chunkkv:budget={budget},align=none+kivi:bits=4", 0.3),
    "kvzip+kivi4": ("kvzip:budget={budget},alloc=global+kivi:bits=4", 0.3),
    "chunkkv-sentence+kivi4": ("chunkkv:budget={budget},align=sentence+kivi:bits=4", 0.3),
}
DEFAULT_METHODS = "snapkv,chunkkv,chunkkv-sentence,adakv,tova,expected,kvzip,chunkkv-sentence+kivi4,kvzip+kivi4"


def budget_fraction(ratio, bytes_vs_f16):
    """The budget as a fraction p/q of the case length for a target ratio of bytes; at most the whole context."""
    f = Fraction(1) / (Fraction(ratio).limit_denominator(100) * Fraction(bytes_vs_f16).limit_denominator(100))
    f = min(f, Fraction(1))
    return f"{f.numerator}/{f.denominator}"


def policies_for(methods, ratios):
    out = ["full"]
    for name in methods:
        template, bytes_vs_f16 = METHODS[name]
        for r in ratios:
            out.append(template.format(budget=budget_fraction(r, bytes_vs_f16)))
    return list(dict.fromkeys(out))


def run_eval(a, length, mode, policies, path, tasks=None, depths=None):
    cmd = [a.longctx, "eval", ",".join(tasks or a.tasks), "-m", a.model, "--lengths", length, "--depths", depths or a.depths,
           "--seeds", str(a.seeds), "-t", str(a.threads), "--progress", "off", "-o", path]
    if a.device:
        cmd += ["--device", a.device]
    if mode == "after":
        cmd.append("--question-after-compress")
    for p in policies:
        cmd += ["--kv", p]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def parse_depths(text):
    return [float(d) for d in text.split(",")]


def resume_eval(a, length, mode, policies, path):
    """Completes a cut-off run at `path`: reruns, one eval per task, the depths where some policy has no case yet
    (in a part file beside it, merged when done or at the next call if this one is cut off too)."""
    with open(path) as f:
        doc = json.load(f)
    for task in a.tasks:
        part = f"{path}.part-{task}.json"
        if os.path.exists(part):  # a part an earlier call left: its finished (depth, policy) cases count
            with open(part) as f:
                doc["cases"] += json.load(f)["cases"]
            os.remove(part)
    doc.pop("summary", None)  # the per-policy summary of the first run only: the table reads the cases
    key = lambda c: (c["task"], round(c["depth"], 6), c["seed"], c["policy"])
    doc["cases"] = list({key(c): c for c in doc["cases"]}.values())
    want_seeds = range(1, a.seeds + 1)
    for task in a.tasks:
        have = {key(c) for c in doc["cases"]}
        depths = [0.0] if task == "ppl" else parse_depths(a.depths)  # ppl scores the text after the prefix
        missing = [d for d in depths
                   if any((task, round(d, 6), s, p) not in have for s in want_seeds for p in policies)]
        if not missing:
            continue
        doc["cases"] = [c for c in doc["cases"] if not (c["task"] == task and round(c["depth"], 6) in
                                                           {round(d, 6) for d in missing})]
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        part = f"{path}.part-{task}.json"
        run_eval(a, length, mode, policies, part, tasks=[task],
                 depths=a.depths if task == "ppl" else ",".join(str(d) for d in missing))
        with open(part) as f:
            doc["cases"] += json.load(f)["cases"]
        os.remove(part)
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)


def table(path, methods, ratios):
    with open(path) as f:
        cases = json.load(f)["cases"]
    by_policy = defaultdict(list)
    for c in cases:
        by_policy[c["policy"]].append(c)
    tasks = list(dict.fromkeys(c["task"] for c in cases))

    def case_key(c):
        return (c["task"], c["length"], c["depth"], c["seed"])

    def answer(c):
        # The number the answer gives first (every task's answer is a number): what "the same answer" compares.
        m = re.search(r"\d+", c.get("got") or "")
        return m.group(0) if m else ""

    full = {case_key(c): c for c in by_policy.get("full", [])}

    def perplexity(cs):
        n = sum(c["n_scored"] for c in cs)
        return math.exp(sum(c["nll_sum"] for c in cs) / n) if n else 0.0

    def cell(policy):
        cs = by_policy.get(policy)
        if not cs:
            return "n/a"
        ratio = sum(c["kv_full_f16_bytes"] for c in cs) / max(1, sum(c["kv_bytes"] for c in cs))
        accs = []
        for t in tasks:
            tc = [c for c in cs if c["task"] == t]
            if tc and t == "ppl":
                p, p_full = perplexity(tc), perplexity([full[case_key(c)] for c in tc if case_key(c) in full])
                accs.append(f"ppl {p:.2f}" if policy == "full" or not p_full else f"ppl {100 * (p / p_full - 1):+.1f}%")
            elif tc:
                accs.append(f"{sum(c['correct'] for c in tc)}/{len(tc)}")
        same = [answer(c) == answer(full[case_key(c)]) for c in cs if case_key(c) in full and c["task"] != "ppl"]
        agree = f", ={sum(same)}/{len(same)}" if same and policy != "full" else ""
        return f"{' '.join(accs)} ({ratio:.1f}x{agree})"

    head = f"| method (tasks: {', '.join(tasks)}) | " + " | ".join(f"{r}x" for r in ratios) + " |"
    lines = [head, "|---|" + "---:|" * len(ratios), "| full | " + cell("full") + " |" + " |" * (len(ratios) - 1)]
    for name in methods:
        template, bytes_vs_f16 = METHODS[name]
        cells = [cell(template.format(budget=budget_fraction(r, bytes_vs_f16))) for r in ratios]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-o", "--out", required=True, help="folder for the eval JSONs and quality_table.md")
    ap.add_argument("--longctx", default="build/release/longctx")
    ap.add_argument("--lengths", default="4k")
    ap.add_argument("--ratios", default="2,4,8,20")
    ap.add_argument("--tasks", default="needle,multikey")
    ap.add_argument("--depths", default="0.25,0.5,0.75")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="", help="eval's --device (cpu or cuda; default: eval's own choice)")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--modes", default="inside,after", help="inside: question in the prompt; after: read after")
    ap.add_argument("--table-only", action="store_true", help="summarise the JSONs already in OUT")
    a = ap.parse_args()
    a.tasks = a.tasks.split(",")
    methods = a.methods.split(",")
    for m in methods:
        if m not in METHODS:
            sys.exit(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    ratios = [float(r) if "." in r else int(r) for r in a.ratios.split(",")]
    os.makedirs(a.out, exist_ok=True)
    md = []
    for length in a.lengths.split(","):
        for mode in a.modes.split(","):
            if mode not in ("inside", "after"):
                sys.exit(f"unknown mode {mode!r}: inside or after")
            path = os.path.join(a.out, f"quality_{length}_{mode}.json")
            if not os.path.exists(path):
                if a.table_only:
                    continue
                run_eval(a, length, mode, policies_for(methods, ratios), path)
            elif not a.table_only:
                resume_eval(a, length, mode, policies_for(methods, ratios), path)
            md.append(f"### {length} tokens, question {mode} the compressed context\n\n" + table(path, methods, ratios))
    text = "\n\n".join(md) + "\n"
    with open(os.path.join(a.out, "quality_table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
