#!/usr/bin/env python3
"""Plots `longctx plan --json` output: KV memory per sequence and decode speed against context length, one line
per KV policy.

    build/release/longctx plan --shape llama3.1-8b --device h200 --ctx 4k,8k,16k,32k,64k,128k \\
        --kv full --kv kivi:bits=4 --kv snapkv:budget=4096+kivi:bits=2 --concurrency 1 --json > plan.json
    scripts/plot_plan.py plan.json -o plan.png

Reads one or more JSON files (their rows are pooled) or '-' for stdin. Needs matplotlib.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="outputs of longctx plan --json ('-': stdin)")
    ap.add_argument("-o", "--out", default="plan.png")
    a = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.load(sys.stdin if p == "-" else open(p)) for p in a.json]
    by_policy = {}
    for d in docs:
        for r in d["rows"]:
            by_policy.setdefault(r["kv"], []).append(r)
    fig, (ax_mem, ax_dec) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kv, rows in by_policy.items():
        rows.sort(key=lambda r: r["ctx"])
        ctx = [r["ctx"] for r in rows]
        ax_mem.plot(ctx, [r["kv_bytes_per_seq"] / 2**30 for r in rows], marker="o", label=kv)
        ax_dec.plot(ctx, [r["tokens_per_s_per_user"] for r in rows], marker="o", label=kv)
    first = docs[0]
    for ax in (ax_mem, ax_dec):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.set_ylabel("KV cache per sequence (GiB)")
    ax_mem.set_yscale("log")
    ax_dec.set_ylabel("decode tokens/s per user")
    ax_dec.legend(fontsize=8)
    fig.suptitle(f"{first['model']['name']} on {first['device']['name']} (longctx plan)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
