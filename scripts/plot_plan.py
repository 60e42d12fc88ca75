#!/usr/bin/env python3
"""Plots `longctx plan --json` output: KV memory per sequence, the KV read per decode step (a read policy such as
Quest reads less than it holds) and decode speed against context length, one line per KV policy; with --spec, the
speculative decode speed of the full-cache rows as a dashed line.

    build/release/longctx plan --shape llama3.1-8b --device h200 --ctx 4k,8k,16k,32k,64k,128k \\
        --kv full --kv kivi:bits=4 --kv snapkv:budget=4096+kivi:bits=2 --kv quest:budget=4096 --concurrency 1 \\
        --spec self:gamma=4,draft=streaming:budget=2048,sink=4 --json > plan.json
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
    fig, (ax_mem, ax_read, ax_dec) = plt.subplots(1, 3, figsize=(17, 4.5))
    for kv, rows in by_policy.items():
        rows.sort(key=lambda r: r["ctx"])
        ctx = [r["ctx"] for r in rows]
        line, = ax_mem.plot(ctx, [r["kv_bytes_per_seq"] / 2**30 for r in rows], marker="o", label=kv)
        # Older outputs have no read column: the held KV is what a step read then.
        ax_read.plot(ctx, [r.get("kv_read_bytes_per_step", r["kv_payload_bytes"]) / 2**20 for r in rows], marker="o",
                     color=line.get_color(), label=kv)
        ax_dec.plot(ctx, [r["tokens_per_s_per_user"] for r in rows], marker="o", color=line.get_color(), label=kv)
        spec = [(r["ctx"], r["spec"]["tokens_per_s"]) for r in rows if "spec" in r]
        if spec:
            ax_dec.plot([c for c, _ in spec], [t for _, t in spec], marker="x", linestyle="--", color=line.get_color(),
                        label=f"{kv} + spec (one user)")
    first = docs[0]
    for ax in (ax_mem, ax_read, ax_dec):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.set_ylabel("KV cache per sequence (GiB)")
    ax_mem.set_yscale("log")
    ax_read.set_ylabel("KV read per decode step, per sequence (MiB)")
    ax_read.set_yscale("log")
    ax_dec.set_ylabel("decode tokens/s per user")
    ax_dec.legend(fontsize=8)
    title = f"{first['model']['name']} on {first['device']['name']} (longctx plan)"
    if "spec" in first:
        sp = first["spec"]
        title += f"; spec gamma {sp['gamma']}, draft {sp['draft']}, acceptance {sp['accept']}" + \
            ("" if sp["accept_given"] else " (assumed)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
