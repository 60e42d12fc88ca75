#!/usr/bin/env python3
"""Measures what `longctx plan` predicts on this CPU and writes tests/golden/plan/cpu_measured.json.

For each model and KV policy, in each round: the plan's kernel probes (`longctx plan --measure --json`) and then
`longctx bench --json` (pp and tg at the given depths), both at the same thread count, with the load average
before and after. tests/plan_test.cpp predicts every bench case from the probes of the same round and fails when a
prediction misses the median over rounds by more than its bound.

The machine is shared: run it when `uptime` shows a load well below the core count, and look at the spread it
records (min and max over rounds beside each median).

Usage: scripts/plan_golden_cpu.py [--build build/release] [--rounds 2] [--reps 3] [--threads 2] [--out PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODEL_DIR = os.environ.get("LONGCTX_MODEL_DIR", os.path.expanduser("~/.cache/longctx"))

# (file, depths, policies). SmolLM2's trained context is 8K, so its deepest case is 4096; Gemma 3 goes to 16K.
CASES = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "0,4096", ["full", "kivi:bits=2", "snapkv:budget=1024+kivi:bits=2",
                                                   "quest:budget=1024,page=16"]),
    ("gemma-3-270m-q4_k_m.gguf", "0,4096,16384", ["full", "snapkv:budget=1024+kivi:bits=2"]),
]
N_PROMPT, N_GEN = 512, 32


def load():
    return os.getloadavg()[0]


def wait_for_quiet(limit, max_wait_s=1800):
    """Waits until the 1-minute load average is below limit (or max_wait_s passed); returns the load then."""
    t0 = time.time()
    while load() >= limit and time.time() - t0 < max_wait_s:
        time.sleep(20)
    return load()


def run_json_lines(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="tests/golden/plan/cpu_measured.json")
    ap.add_argument("--quiet-load", type=float, default=0.5,
                    help="wait for the 1-minute load average to fall below this before each measurement")
    a = ap.parse_args()
    exe = os.path.join(a.build, "longctx")

    models = []
    for file, depths, policies in CASES:
        path = os.path.join(MODEL_DIR, file)
        rounds = []
        for r in range(a.rounds):
            rnd = {"load_before": wait_for_quiet(a.quiet_load), "probes": None, "bench": {}, "bench_load": {}}
            plan_cmd = [exe, "plan", "-m", path, "--measure", "--json", "-t", str(a.threads), "--ctx", "4096"]
            for p in policies:
                plan_cmd += ["--kv", p]
            out = subprocess.run(plan_cmd, check=True, capture_output=True, text=True).stdout
            rnd["probes"] = json.loads(out)["device"]["kernels"]
            for p in policies:
                rnd["bench_load"][p] = [wait_for_quiet(a.quiet_load)]
                recs = run_json_lines([exe, "bench", "-m", path, "-p", str(N_PROMPT), "-n", str(N_GEN), "-d", depths,
                                       "-t", str(a.threads), "-r", str(a.reps), "--kv", p, "--json"])
                rnd["bench"][p] = recs
                rnd["bench_load"][p].append(load())
            rnd["load_after"] = load()
            rnd["time"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            rounds.append(rnd)
            print(f"{file} round {r}: load {rnd['load_before']:.2f} -> {rnd['load_after']:.2f}", file=sys.stderr)

        # Medians over rounds: the probes' rates and each case's tokens/s; the spread beside them.
        def med(values):
            return statistics.median(values)

        k0 = rounds[0]["probes"]
        probes = {"threads": k0["threads"]}
        for key in ("copy_bandwidth", "matmul_call_s", "attention_call_s", "attention_flops", "layer_overhead_s",
                    "prefill_row_overhead_s", "quest_rank_s", "attention_page_s", "prefill_attention_page_s",
                    "view_page_s"):
            vals = [rd["probes"][key] for rd in rounds]
            probes[key] = med(vals)
            probes[key + "_range"] = [min(vals), max(vals)]
        for key in ("gemv_bytes_per_s", "gemm_flops", "attention_read_bytes_per_s"):
            probes[key] = {}
            for name in k0[key]:
                vals = [rd["probes"][key][name] for rd in rounds]
                probes[key][name] = med(vals)
                probes[key][name + "_range"] = [min(vals), max(vals)]
        cases = []
        for p in policies:
            for i, rec in enumerate(rounds[0]["bench"][p]):
                per_round = [rd["bench"][p][i] for rd in rounds]
                samples = [x for rr in per_round for x in rr["samples"]]
                case = {"kv_spec": p, "kv": rec["kv"], "test": rec["test"], "n_prompt": rec["n_prompt"],
                        "n_gen": rec["n_gen"], "depth": rec["depth"],
                        "tokens_per_s": med([rr["tokens_per_s"] for rr in per_round]),
                        "round_medians": [rr["tokens_per_s"] for rr in per_round],
                        "min": min(samples), "max": max(samples), "peak_rss_bytes": rec["peak_rss_bytes"]}
                if rec["test"].startswith("tg"):
                    case["weight_bytes_per_token"] = rec["weight_bytes_per_token"]
                    case["kv_bytes_per_token"] = rec["kv_bytes_per_token"]
                    case["copy_gb_per_s"] = med([rr["copy_gb_per_s"] for rr in per_round])
                cases.append(case)
        models.append({"file": file, "depths": depths, "probes": probes, "cases": cases,
                       "rounds": [{"time": rd["time"], "load_before": rd["load_before"],
                                   "load_after": rd["load_after"], "bench_load": rd["bench_load"]}
                                  for rd in rounds]})

    golden = {
        "what": "longctx bench on this CPU beside the plan's probes of the same kernels, medians over rounds",
        "command": " ".join(["scripts/plan_golden_cpu.py"] + sys.argv[1:]),
        "bench": f"longctx bench -m MODEL -p {N_PROMPT} -n {N_GEN} -d DEPTHS -t {a.threads} -r {a.reps} --kv SPEC --json",
        "probe": f"longctx plan -m MODEL --measure --json -t {a.threads} --kv SPEC...",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/  */ /g'"], capture_output=True,
                                  text=True).stdout.strip(),
        "models": models,
    }
    with open(a.out, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
