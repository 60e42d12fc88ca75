#!/usr/bin/env python3
"""Compares two `longctx eval` result files case by case (the same prompts on two devices, or two builds): for each
(task, policy, length, depth, seed) whether both were correct, and whether the generated answers are the same text,
and if not, after how many characters they part. Prints a markdown table per policy and exits 1 when the two files
differ in correctness anywhere (answer text may part after the fact, on a near-tie of two tokens).

    scripts/compare_eval_answers.py A.json B.json [--names cuda,cpu]
"""
import argparse
import json
import sys
from collections import defaultdict


def key(c: dict) -> tuple:
    return (c["task"], c["policy"], c["length"], c["depth"], c["seed"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="A,B")
    args = ap.parse_args()
    na, nb = args.names.split(",")
    ca = {key(c): c for c in json.load(open(args.a))["cases"]}
    cb = {key(c): c for c in json.load(open(args.b))["cases"]}
    if ca.keys() != cb.keys():
        print(f"the files hold different cases: {len(ca.keys() ^ cb.keys())} unmatched", file=sys.stderr)
        return 2
    rows = defaultdict(lambda: [0, 0, 0, 0, 0])  # cases, correct a, correct b, same correctness, same text
    partings = []
    for k in sorted(ca):
        a, b = ca[k], cb[k]
        r = rows[k[:2]]
        r[0] += 1
        r[1] += a["correct"]
        r[2] += b["correct"]
        r[3] += a["correct"] == b["correct"]
        r[4] += a["got"] == b["got"]
        if a["got"] != b["got"]:
            i = next((i for i, (x, y) in enumerate(zip(a["got"], b["got"])) if x != y), min(len(a["got"]), len(b["got"])))
            partings.append(f"{k}: part at char {i}: {a['got'][:i + 12]!r} / {b['got'][:i + 12]!r}")
    print(f"| task | policy | cases | correct {na} | correct {nb} | same correctness | same answer text |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (task, policy), r in sorted(rows.items()):
        print(f"| {task} | {policy} | {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")
    for p in partings:
        print(p)
    return 0 if all(r[3] == r[0] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
