#!/usr/bin/env python3
"""longctx against llama.cpp on the same GGUF, the same cases and the same thread count, interleaved in one
invocation; prints one markdown table of tokens/s and their ratio, with each side's peak resident memory.

needs:  pip install llama-cpp-python   (its source distribution builds llama.cpp; this script installs nothing)
        a release build of longctx (scripts/build.sh release, or --binary PATH)

usage:  scripts/bench_peer.py -m MODEL [--depth 0,4096] [-p 512] [-n 128] [--threads 2] [--rounds 3] [--reps 1]

The cases are llama-bench's: for each depth d, "pp N" times prefilling N tokens on top of a cache already holding d
tokens, "tg N" times generating N tokens one forward at a time on top of d tokens. Both sides feed the same fixed
pseudo-random token ids (bench_token_id in apps/cli/bench_command.h: splitmix64 of seed + position), fill the depth
untimed in chunks of 512, keep the KV cache in f16, and time wall clock around the forward calls only (on the
llama.cpp side llama_decode + llama_synchronize, as llama-bench does), with logits computed for the last token of a
pp and for every tg token, and no sampling.

Interleaving: for every (depth, round) one `longctx bench --json` process runs the round's repetitions of pp and tg,
then one child Python process runs the same on llama.cpp (the order alternates between rounds, so drift on a
shared machine hits both alike). Figures are medians over all rounds x reps; "best / best" is the ratio of the two
fastest runs, the steadier figure when other work shares the cores (other load only ever slows a run down). Each
side runs in its own process, so its peak RSS (VmHWM) is its own; the llama.cpp child's figure is shown less the
Python interpreter's resident memory measured before the model is loaded (llama-cpp-python's imports, numpy
included).

llama.cpp settings: flash_attn=True, n_batch = n_ubatch = 512, n_threads = n_threads_batch = --threads,
type_k = type_v = f16, n_ctx = depth + max(N_pp, N_tg), mmap on (as longctx). Gemma 3's sliding-window layers use
llama.cpp's default SWA cache (only the window is kept on those layers); --swa-full keeps every token there too.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache/longctx"))
N_BATCH = 512
MASK64 = (1 << 64) - 1


def bench_token_id(seed: int, pos: int, n_vocab: int) -> int:
    """The same ids as longctx's bench_token_id (apps/cli/bench_command.cpp): splitmix64, one step per position."""
    z = (seed + pos * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z % n_vocab


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The llama.cpp side, in a child process of its own (--llama-child).

def llama_child(a) -> None:
    import llama_cpp  # imported before the baseline, so the baseline holds the interpreter and its libraries

    base_kib = rss_kib("VmRSS")
    n_test = max(a.n_prompt, a.n_gen)
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=a.depth + n_test, n_batch=N_BATCH, n_ubatch=N_BATCH,
                          n_threads=a.threads, n_threads_batch=a.threads, flash_attn=True,
                          type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16, swa_full=a.swa_full,
                          use_mmap=True, logits_all=False, verbose=False)
    ctx = llm._ctx.ctx
    mem = llama_cpp.llama_get_memory(ctx)
    n_vocab = llm.n_vocab()
    n_swa = llama_cpp.llama_model_n_swa(llm._model.model)
    batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def decode(first_pos: int, n: int, want_logits: bool) -> float:
        """Runs positions [first_pos, first_pos + n) in chunks of N_BATCH; returns seconds spent in llama.cpp."""
        spent = 0.0
        for start in range(0, n, N_BATCH):
            ln = min(N_BATCH, n - start)
            for i in range(ln):
                pos = first_pos + start + i
                batch.token[i] = bench_token_id(a.seed, pos, n_vocab)
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if want_logits and start + i == n - 1 else 0
            batch.n_tokens = ln
            t0 = time.perf_counter()
            rc = llama_cpp.llama_decode(ctx, batch)
            llama_cpp.llama_synchronize(ctx)
            spent += time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {first_pos + start}")
        return spent

    def fill() -> None:
        llama_cpp.llama_memory_clear(mem, True)
        decode(0, a.depth, False)

    def restore() -> None:
        # Dropping the tokens a test appended restores the depth exactly for a plain cache; llama.cpp's SWA cache has
        # already pruned the window layers' older tokens, so there the depth is filled again.
        if n_swa > 0 and not a.swa_full:
            fill()
        elif not llama_cpp.llama_memory_seq_rm(mem, 0, a.depth, -1):
            fill()

    # Warm-up, untimed, as longctx bench and llama-bench do.
    decode(0, min(max(a.n_prompt, 1), 32), True)
    llama_cpp.llama_memory_clear(mem, True)
    decode(0, 1, True)

    fill()
    pp, tg = [], []
    for _ in range(a.reps):
        if a.n_prompt > 0:
            restore()
            pp.append(a.n_prompt / decode(a.depth, a.n_prompt, True))
        if a.n_gen > 0:
            restore()
            spent = 0.0
            for i in range(a.n_gen):
                spent += decode(a.depth + i, 1, True)
            tg.append(a.n_gen / spent)
    llama_cpp.llama_batch_free(batch)
    print(json.dumps({"pp": pp, "tg": tg, "peak_rss_bytes": rss_kib("VmHWM") * 1024,
                      "python_base_rss_bytes": base_kib * 1024, "version": llama_cpp.__version__}))


# ---------------------------------------------------------------------------------------------------------------
# The driver.

def run_longctx(a, depth: int) -> dict:
    cmd = longctx_cmd(a, depth)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"longctx bench failed ({p.returncode}): {p.stderr.strip()}")
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return {r["test"][:2]: r for r in recs}


def longctx_cmd(a, depth: int) -> list:
    return [a.binary, "bench", "-m", a.model, "-p", str(a.n_prompt), "-n", str(a.n_gen), "--depth", str(depth),
            "--threads", str(a.threads), "--reps", str(a.reps), "--batch", str(N_BATCH), "--kv", "full:type=f16",
            "--seed", str(a.seed), "--json"]


def run_llama(a, depth: int) -> dict:
    cmd = [sys.executable, __file__, "--llama-child", "-m", a.model, "--depth", str(depth), "-p", str(a.n_prompt),
           "-n", str(a.n_gen), "--threads", str(a.threads), "--reps", str(a.reps), "--seed", str(a.seed)]
    if a.swa_full:
        cmd.append("--swa-full")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"llama.cpp child failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--depth", default="0", help="comma-separated context depths (default 0)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="tokens of the pp test (0: skip)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="tokens of the tg test (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per depth (one process per side each)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of each test inside one round")
    ap.add_argument("--seed", type=int, default=1, help="seed of the token ids")
    ap.add_argument("--swa-full", action="store_true", help="llama.cpp keeps every token on sliding-window layers")
    ap.add_argument("--binary", default=str(ROOT / "build/release/longctx"), help="the longctx binary")
    ap.add_argument("--llama-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.llama_child:
        a.depth = int(a.depth)
        llama_child(a)
        return
    if not Path(a.model).is_file():
        sys.exit(f"error: model '{a.model}' not found (scripts/setup.sh downloads the models)")
    if not Path(a.binary).is_file():
        sys.exit(f"error: longctx binary '{a.binary}' not found: build it (scripts/build.sh release) or pass --binary")
    try:
        depths = [int(d) for d in a.depth.split(",")]
        if any(d < 0 for d in depths):
            raise ValueError
    except ValueError:
        sys.exit(f"error: bad --depth list '{a.depth}' (example: --depth 0,4096)")

    t_start = time.time()
    rows = []
    llama_version = "?"
    for depth in depths:
        lc = {"pp": [], "tg": [], "rss": [], "copy": [], "pct": []}
        ll = {"pp": [], "tg": [], "rss": [], "base": []}
        for rnd in range(a.rounds):
            order = ("longctx", "llama") if rnd % 2 == 0 else ("llama", "longctx")
            for side in order:
                t0 = time.time()
                if side == "longctx":
                    recs = run_longctx(a, depth)
                    for k in ("pp", "tg"):
                        if k in recs:
                            lc[k] += recs[k]["samples"]
                            lc["rss"].append(recs[k]["peak_rss_bytes"])
                    if "tg" in recs:
                        lc["copy"].append(recs["tg"]["copy_gb_per_s"])
                        lc["pct"].append(recs["tg"]["pct_of_copy"])
                else:
                    r = run_llama(a, depth)
                    ll["pp"] += r["pp"]
                    ll["tg"] += r["tg"]
                    ll["rss"].append(r["peak_rss_bytes"] - r["python_base_rss_bytes"])
                    ll["base"].append(r["python_base_rss_bytes"])
                    llama_version = r["version"]
                print(f"depth {depth} round {rnd + 1}/{a.rounds}: {side} done in {time.time() - t0:.0f}s",
                      file=sys.stderr, flush=True)
        for k, n in (("pp", a.n_prompt), ("tg", a.n_gen)):
            if n == 0:
                continue
            l_med, r_med = statistics.median(lc[k]), statistics.median(ll[k])
            rows.append({"test": f"{k}{n}", "depth": depth, "longctx": l_med, "llama": r_med,
                         "l_spread": (min(lc[k]), max(lc[k])), "r_spread": (min(ll[k]), max(ll[k])),
                         "pct": statistics.median(lc["pct"]) if k == "tg" and lc["pct"] else None,
                         "l_rss": max(lc["rss"]), "r_rss": max(ll["rss"]), "r_base": statistics.median(ll["base"]),
                         "copy": statistics.median(lc["copy"]) if lc["copy"] else None})

    n_samples = a.rounds * a.reps
    print(f"model `{Path(a.model).name}`, {a.threads} threads, median of {n_samples} runs per cell "
          f"({a.rounds} interleaved rounds x {a.reps} reps); {datetime.date.today().isoformat()}, "
          f"{cpu_model()}, llama-cpp-python {llama_version}; {time.time() - t_start:.0f}s in all\n")
    print("| test | depth | longctx tok/s (min..max) | llama.cpp tok/s (min..max) | longctx / llama.cpp "
          "| best / best | longctx decode % of copy | peak RSS longctx | peak RSS llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pct = f"{r['pct']:.0f}%" if r["pct"] is not None else ""
        print(f"| {r['test']} | {r['depth']} | {r['longctx']:.2f} ({r['l_spread'][0]:.1f}..{r['l_spread'][1]:.1f}) "
              f"| {r['llama']:.2f} ({r['r_spread'][0]:.1f}..{r['r_spread'][1]:.1f}) "
              f"| {r['longctx'] / r['llama']:.2f}x | {r['l_spread'][1] / r['r_spread'][1]:.2f}x | {pct} "
              f"| {mib(r['l_rss'])} | {mib(r['r_rss'])} |")
    copies = [r["copy"] for r in rows if r["copy"] is not None]
    print()
    if copies:
        print(f"copy bandwidth (measured by longctx bench: memcpy over {a.threads} threads, read + write bytes, "
              f"best of 10; median over rounds): {statistics.median(copies):.2f} GB/s")
    if rows:
        print(f"llama.cpp peak RSS is the child's VmHWM less its Python baseline of {mib(rows[0]['r_base'])} "
              f"(interpreter and imports, measured before the model loads); "
              f"SWA cache: {'full' if a.swa_full else 'llama.cpp default (window only on sliding-window layers)'}")
    print(f"command: {shlex.join([sys.argv[0]] + sys.argv[1:])}")
    print(f"longctx side, per round: {shlex.join(longctx_cmd(a, depths[0]))}  (with each --depth)")


if __name__ == "__main__":
    main()
