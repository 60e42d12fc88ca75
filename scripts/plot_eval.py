#!/usr/bin/env python3
"""Plots of `longctx eval` results: a needle heatmap per policy (depth by length, colour = accuracy), accuracy
against KV bytes per token for every policy, and perplexity against budget.

usage: scripts/plot_eval.py RESULTS.json [RESULTS.json ...] -o OUT_DIR [--prefix NAME]

Needs matplotlib (PyPI). Reads only the JSON the engine writes; a partial file (a run stopped midway) plots what
it holds.
"""
import argparse
import json
import math
import os
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

RETRIEVAL = ("needle", "multikey", "multivalue", "kvret", "passkey")


def load(paths):
    cases, meta = [], None
    for p in paths:
        with open(p) as f:
            j = json.load(f)
        meta = meta or j
        cases += j["cases"]
    return meta, cases


def budget_fraction(policy):
    """'snapkv:budget=1/4' -> 0.25; no budget (full, kivi alone) -> 1.0."""
    m = re.search(r"budget=(\d+)/(\d+)", policy)
    return int(m.group(1)) / int(m.group(2)) if m else 1.0


def policy_family(policy):
    """The policy with its budget taken out, so 1/4 and 1/8 of one method join in one line."""
    return re.sub(r"budget=\d+/\d+,?", "", policy).replace(":+", "+").rstrip(":").replace(":,", ":")


def heatmaps(cases, out, prefix):
    needle = [c for c in cases if c["task"] == "needle"]
    policies = list(dict.fromkeys(c["policy"] for c in needle))
    if not policies:
        return None
    lengths = sorted({c["length"] for c in needle})
    depths = sorted({c["depth"] for c in needle})
    n = len(policies)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows + 0.4), squeeze=False)
    for i, pol in enumerate(policies):
        ax = axes[i // cols][i % cols]
        grid = [[float("nan")] * len(lengths) for _ in depths]
        acc = defaultdict(list)
        for c in needle:
            if c["policy"] == pol:
                acc[(c["depth"], c["length"])].append(1.0 if c["correct"] else 0.0)
        for (d, l), v in acc.items():
            grid[depths.index(d)][lengths.index(l)] = sum(v) / len(v)
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{l // 1024}K" if l % 1024 == 0 else str(l) for l in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_title(pol, fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.supxlabel("length (tokens)", fontsize=8)
    fig.supylabel("needle depth", fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, f"{prefix}needle_heatmap.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def accuracy_vs_bytes(cases, out, prefix):
    asked = [c for c in cases if c["task"] in RETRIEVAL]
    if not asked:
        return None
    by = defaultdict(lambda: [0, 0, 0.0])
    for c in asked:
        e = by[c["policy"]]
        e[0] += 1 if c["correct"] else 0
        e[1] += 1
        e[2] += c["kv_bytes_per_token"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for pol, (ok, n, b) in by.items():
        x, y = b / n, ok / n
        ax.scatter([x], [y], s=25)
        ax.annotate(pol, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("KV bytes per token (log)")
    ax.set_ylabel("accuracy (retrieval tasks)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, f"{prefix}accuracy_vs_kv_bytes.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def ppl_vs_budget(cases, out, prefix):
    ppl = [c for c in cases if c["task"] == "ppl"]
    if not ppl:
        return None
    by = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))  # family -> fraction -> (nll, n)
    for c in ppl:
        e = by[policy_family(c["policy"])][budget_fraction(c["policy"])]
        e[0] += c["nll_sum"]
        e[1] += c["n_scored"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, pts in by.items():
        xs = sorted(pts)
        ys = [math.exp(pts[x][0] / pts[x][1]) for x in xs]
        ax.plot(xs, ys, marker="o", label=fam)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token budget (fraction of the context)")
    ax.set_ylabel("perplexity of the continuation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(out, f"{prefix}ppl_vs_budget.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def table(cases, length=None):
    """The engine's summary table (policy | KV bytes/token | KV pool peak | accuracy per task | perplexity | decode
    tok/s) as
    Markdown, over one length or all, so a partial file gets one too."""
    cs = [c for c in cases if length is None or c["length"] == length]
    tasks = list(dict.fromkeys(c["task"] for c in cs))
    head = "| policy | KV bytes/token | KV pool peak | " + " | ".join(
        "perplexity" if t == "ppl" else f"{t} acc" for t in tasks) + " | decode tok/s |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(tasks) + "---:|"]
    for pol in dict.fromkeys(c["policy"] for c in cs):
        pc = [c for c in cs if c["policy"] == pol]
        peak = max(c.get("kv_pool_peak_bytes", 0) for c in pc)  # absent in files older than the field
        row = [pol, f"{sum(c['kv_bytes_per_token'] for c in pc) / len(pc):.0f}", f"{peak / 2**20:.1f} MiB" if peak else "-"]
        for t in tasks:
            tc = [c for c in pc if c["task"] == t]
            if not tc:
                row.append("-")
            elif t == "ppl":
                row.append(f"{math.exp(sum(c['nll_sum'] for c in tc) / sum(c['n_scored'] for c in tc)):.2f}")
            else:
                row.append(f"{sum(1 for c in tc if c['correct'])}/{len(tc)}")
        gen = sum(max(0, (c["n_scored"] if c["task"] == "ppl" else c["n_generated"]) - 1) for c in pc)
        dec = sum(c["decode_seconds"] for c in pc)
        row.append(f"{gen / dec:.1f}" if dec > 0 else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--prefix", default="", help="file name prefix, e.g. the model's")
    ap.add_argument("--table", action="store_true", help="also print the summary table per length (Markdown)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    _, cases = load(a.results)
    for p in (heatmaps(cases, a.out, a.prefix), accuracy_vs_bytes(cases, a.out, a.prefix),
              ppl_vs_budget(cases, a.out, a.prefix)):
        if p:
            print(p)
    if a.table:
        for length in sorted({c["length"] for c in cases}):
            print(f"\nlength {length}:\n\n" + table(cases, length))


if __name__ == "__main__":
    main()
