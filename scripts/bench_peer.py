#!/usr/bin/env python3
"""Prefill and decode speed of `longctx run` beside llama.cpp (through llama-cpp-python) on the same GGUF, the
same prompt text and the same thread count, interleaved in one invocation; prints a table with the ratios.

usage: scripts/bench_peer.py [-m MODEL] [--threads 2] [--prompt-tokens 512] [-n 64] [--reps 3]
needs: pip install llama-cpp-python (its source distribution builds llama.cpp; flash attention is switched on)
"""
import argparse
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache/longctx"))


def make_prompt(n_words: int) -> str:
    text = subprocess.run(["bible", "-f", "-l10000", "gen1:1-gen10:32"], capture_output=True, text=True,
                          check=True).stdout
    return " ".join(text.split()[:n_words])


def run_longctx(binary, model, prompt, n_predict, threads):
    p = subprocess.run([str(binary), "run", "-m", str(model), "-p", prompt, "-n", str(n_predict), "--temp", "0",
                        "--threads", str(threads), "--ignore-eos", "--ctx", "4096", "-b", "512"],
                       capture_output=True, text=True, check=True)
    pre = re.search(r"prefill: (\d+) tokens in ([\d.]+)s", p.stderr)
    dec = re.search(r"decode:  (\d+) tokens in ([\d.]+)s", p.stderr)
    return int(pre[1]), int(pre[1]) / float(pre[2]), int(dec[1]) / float(dec[2])


def run_llama(llm, prompt, n_predict):
    import numpy as np
    tokens = llm.tokenize(prompt.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true")
    llm.reset()
    llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
    t0 = time.perf_counter()
    llm.eval(tokens)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_predict):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    t_dec = time.perf_counter() - t0
    return len(tokens), len(tokens) / t_pre, n_predict / t_dec


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-words", type=int, default=380, help="words of Genesis (about 512 tokens)")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--binary", default=str(ROOT / "build/release/longctx"))
    a = ap.parse_args()

    from llama_cpp import Llama
    import llama_cpp
    llm = Llama(model_path=a.model, n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=a.threads,
                n_threads_batch=a.threads, flash_attn=True, verbose=False)
    prompt = make_prompt(a.prompt_words)
    res = {"longctx": [], "llama.cpp": []}
    for _ in range(a.reps):
        res["longctx"].append(run_longctx(a.binary, a.model, prompt, a.n, a.threads))
        res["llama.cpp"].append(run_llama(llm, prompt, a.n))
    med = {k: (v[0][0], statistics.median(x[1] for x in v), statistics.median(x[2] for x in v)) for k, v in res.items()}
    print(f"model {Path(a.model).name}, {a.threads} threads, llama-cpp-python {llama_cpp.__version__}, "
          f"median of {a.reps} interleaved runs")
    print(f"| engine | prompt tokens | prefill tok/s | decode tok/s ({a.n} tokens) |")
    print("|---|---|---|---|")
    for k, (n, pp, tg) in med.items():
        print(f"| {k} | {n} | {pp:.1f} | {tg:.1f} |")
    l, r = med["longctx"], med["llama.cpp"]
    print(f"| longctx / llama.cpp | | {l[1] / r[1]:.2f}x | {l[2] / r[2]:.2f}x |")


if __name__ == "__main__":
    main()
