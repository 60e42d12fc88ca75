#!/usr/bin/env bash
# The real model files on the GPU machine against the CPU backend on the same files: SmolLM2-135M (98 MB) and
# gemma-3-270m (253 MB) exceed one device call's 64 MiB carry, so they travel in parts of 47 MiB over back-to-back
# calls while the machine is warm (it is given back ~30 s after a call), are reassembled there and checked against
# scripts/setup.sh's sha256 before anything runs.
#
#   scripts/cuda_device_real.sh --stage DIR   (here: DIR/p0 .. DIR/p7, 47 MiB each, p0 and p1 holding SmolLM2 whole,
#                                              and DIR/tools: bin/, lib/, data/, this script)
#   run command="scripts/cuda_device_real.sh add .devcarry/real/pN" carry=[".devcarry/real/pN"]   for N = 0 .. 7
#   run command=".devcarry/real/tools/cuda_device_real.sh check" carry=[".devcarry/real/tools"]
#   (SmolLM2 alone: p0 and p1 added; gemma too with all eight. An add may ride along another call's command.)
#
# check: cuda_forward_test on the real files (logits at several prompt positions and greedy decode, and every policy
# spec, GPU against CPU), then `longctx eval needle` at 1K-8K under full, snapkv:budget=1/4 and kivi:bits=4 on both
# devices (the two runs side by side, one JSON each in $OUT; scripts/compare_eval_answers.py compares them here).
# NEEDLE=0 runs the forward test alone; SERVE=N adds the server's load test on the GPU (tests/server_load_test.py);
# PREFIX=1 adds prefix reuse with compression and shared pages on the GPU (tests/prefix_reuse_test.cpp, built in the
# cuda preset).
set -uo pipefail
if [ "${1:-}" = "--stage" ]; then
  D="$2" repo="$(cd "$(dirname "$0")/.." && pwd)" models="${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}"
  rm -rf "$D" && mkdir -p "$D/split"
  cat "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$models/gemma-3-270m-q4_k_m.gguf" |
    split -b 47M -d -a 2 - "$D/split/part"
  n=0
  for f in "$D"/split/part*; do mkdir -p "$D/p$n" && mv "$f" "$D/p$n/"; n=$((n + 1)); done
  rmdir "$D/split"
  T="$D/tools"
  mkdir -p "$T/bin" "$T/lib" "$T/data"
  cp "$repo/build/cuda/longctx" "$repo/build/cuda/tests/cuda/cuda_forward_test" "$repo/build/cuda/tests/prefix_reuse_test" \
    "$T/bin/" && strip "$T"/bin/*
  for l in libhwy.so.1 libfmt.so.9 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$T/lib/"
  done
  cp "$repo/data/kjv.txt" "$T/data/" && cp "$0" "$repo/tests/server_load_test.py" "$T/"
  du -sh "$D"/*
  exit 0
fi

PARTS=/root/longctx-parts MODELS=/root/longctx-models
mkdir -p "$PARTS" "$MODELS"
rc_all=0
while [ $# -gt 0 ]; do
  case "$1" in
    add) cp "$2"/part* "$PARTS/" && ls "$PARTS" | tr '\n' ' ' && echo; shift 2 ;;
    check)
      shift
      HERE="$(cd "$(dirname "$0")" && pwd)" OUT="${OUT:-$HERE/out}"
      mkdir -p "$OUT"
      export LD_LIBRARY_PATH="$HERE/lib:${LD_LIBRARY_PATH:-}"
      # Parts p0 and p1 hold SmolLM2 whole: with only those added, gemma is left out.
      cat "$PARTS"/part* > /root/both.gguf
      names="SmolLM2-135M-Instruct.Q4_1"
      head -c 98362432 /root/both.gguf > "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
      if [ "$(stat -c %s /root/both.gguf)" = $((98362432 + 253113024)) ]; then
        tail -c +98362433 /root/both.gguf > "$MODELS/gemma-3-270m-q4_k_m.gguf"
        names="$names gemma-3-270m-q4_k_m"
      fi
      rm /root/both.gguf
      grep -E "$(echo $names | tr ' ' '|')" <<SUMS | (cd "$MODELS" && sha256sum -c) || { echo "model checksum FAILED"; exit 1; }
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf
a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m-q4_k_m.gguf
SUMS
      nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
      LONGCTX_MODEL_DIR="$MODELS" timeout 300 "$HERE/bin/cuda_forward_test" 2>&1 | tee "$OUT/forward.txt" |
        grep -E "^\[  (FAILED|PASSED) |OK \]|FAILED  \]|worst|spread"
      [ "${PIPESTATUS[0]}" = 0 ] || rc_all=1
      cd "$HERE"  # eval's haystack: data/kjv.txt
      [ "${NEEDLE:-1}" = 1 ] || names=""  # NEEDLE=0: the forward test alone
      for m in $names; do
        for dev in cuda cpu; do
          timeout 240 "$HERE/bin/longctx" eval needle -m "$MODELS/$m.gguf" --device "$dev" --lengths 1k,2k,4k,8k \
            --depths 0.25,0.75 --kv full --kv snapkv:budget=1/4 --kv kivi:bits=4 --progress off \
            -o "$OUT/needle_${m}_$dev.json" > "$OUT/needle_${m}_$dev.txt" 2>&1 &
        done
        wait
        tail -n 12 "$OUT/needle_${m}_cuda.txt" "$OUT/needle_${m}_cpu.txt"
      done
      if [ "${PREFIX:-0}" = 1 ]; then
        LONGCTX_MODEL_DIR="$MODELS" LONGCTX_DATA_DIR="$HERE/data" LONGCTX_TEST_DEVICE=cuda timeout 300 \
          "$HERE/bin/prefix_reuse_test" 2>&1 | tee "$OUT/prefix.txt" | grep -E "OK \]|FAILED|Failure|Which is|PASSED"
        [ "${PIPESTATUS[0]}" = 0 ] || rc_all=1
      fi
      # SERVE=N: the server's load test on the GPU (N requests from 16 clients, batched; every answer the one it
      # gets alone), SmolLM2; StreamingLLM's in-cache positions do not run on the GPU yet (a 400), h2o instead.
      if [ "${SERVE:-0}" != 0 ]; then
        LONGCTX_MODEL_DIR="$MODELS" LONGCTX_SERVE_ARGS="--device cuda" \
          LONGCTX_LOAD_POLICIES="none,snapkv:budget=16,kivi:bits=4,h2o:budget=24" timeout 600 \
          python3 "$HERE/server_load_test.py" "$HERE/bin/longctx" "$SERVE" 2>&1 | tail -n 20 | tee "$OUT/serve.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || rc_all=1
      fi
      ;;
    *) echo "unknown section $1"; exit 2 ;;
  esac
done
exit $rc_all
