#!/usr/bin/env python3
"""`longctx plan` beside `longctx bench --json` records of the synthetic Llama-3-8B on a GPU (scripts/cuda_device_plan.sh).

For every record: the plan's prediction at the same context (depth + half the generated tokens for tg; the prompt on
top of the depth for pp), on the named datasheet device, one user, and the ratio predicted / measured.

Usage: scripts/plan_vs_bench.py RECORDS.jsonl --device h100|h200 [--build build/release]
"""
import argparse
import json
import os
import subprocess


def plan_row(exe, device, kv, ctx):
    out = subprocess.run([exe, "plan", "--shape", "llama3-8b", "--device", device, "--ctx", str(ctx),
                          "--concurrency", "1", "--kv", kv, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["rows"][0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records")
    ap.add_argument("--device", required=True)
    ap.add_argument("--build", default="build/release")
    a = ap.parse_args()
    exe = os.path.join(a.build, "longctx")
    print("| kv | test | depth | measured tok/s | plan tok/s | plan / measured | KV read/step, bench | plan |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with open(a.records) as f:
        for line in f:
            r = json.loads(line)
            kv = r["kv_spec"]
            if r["test"].startswith("tg"):
                row = plan_row(exe, a.device, kv, r["depth"] + r["n_gen"] // 2)
                pred = row["tokens_per_s_per_user"]
                kv_read = f'{r["kv_bytes_per_token"] / 2**20:.0f} MiB | {row["kv_read_bytes_per_step"] / 2**20:.0f} MiB'
            else:
                # Prefill of n_prompt on top of depth: the plan's whole prompt at depth + n minus the one at depth.
                full = plan_row(exe, a.device, kv, r["depth"] + r["n_prompt"])["prefill_s"]
                before = plan_row(exe, a.device, kv, r["depth"])["prefill_s"] if r["depth"] > 0 else 0.0
                pred = r["n_prompt"] / (full - before)
                kv_read = "| "
            print(f'| {kv} | {r["test"]} | {r["depth"]} | {r["tokens_per_s"]:.1f} | {pred:.1f} | '
                  f'{pred / r["tokens_per_s"]:.2f} | {kv_read} |')


if __name__ == "__main__":
    main()
