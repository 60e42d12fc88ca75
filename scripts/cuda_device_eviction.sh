#!/usr/bin/env bash
# Decode with per-step eviction (TOVA, H2O) on the GPU against the full cache and SnapKV at the same budget, an older
# build beside the current one, after the op tests of the kernels involved (scores, compaction) and the forward test
# on the real model; and with PROFILE=1 an nsys summary of one TOVA run (where a step's time goes). SmolLM2 only, so
# the whole thing takes two calls: its two parts (cuda_device_real.sh's p0 and p1), the tools xz-packed beside p1.
#
#   scripts/cuda_device_eviction.sh --stage OLD_BINARY   (here: .devcarry/mini/tools.tar.xz from build/cuda, ~6 MB;
#     cuda_quant_gemv_test and cuda_quant_bench go along for the calls that run them by hand)
#   run command="scripts/cuda_device_real.sh add .devcarry/real/p0" carry=[".devcarry/real/p0"]
#   run command="scripts/cuda_device_real.sh add .devcarry/real/p1 && scripts/cuda_device_eviction.sh"
#       carry=[".devcarry/real/p1", ".devcarry/mini"]
#   or, one call with no model file: run command="SYNTH=llama3-8b:1 scripts/cuda_device_eviction.sh" carry=[".devcarry/mini"]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-}" = "--stage" ]; then
  S="$(mktemp -d)" && mkdir -p "$S/bin" "$S/lib" "$repo/.devcarry/mini"
  cp "$repo/build/cuda/longctx" "$repo/build/cuda/tests/cuda/cuda_backend_ops_test" \
    "$repo/build/cuda/tests/cuda/cuda_forward_test" "$repo/build/cuda/tests/cuda/cuda_quant_gemv_test" \
    "$repo/build/cuda/tests/cuda/cuda_quant_bench" "$S/bin/"
  cp "$2" "$S/bin/longctx_old"
  strip "$S"/bin/*
  for l in libhwy.so.1 libfmt.so.9 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$S/lib/"
  done
  tar cJf "$repo/.devcarry/mini/tools.tar.xz" -C "$S" bin lib && rm -rf "$S"
  ls -la "$repo/.devcarry/mini"
  exit 0
fi
Q=/root/eviction M=/root/longctx-models/SmolLM2-135M-Instruct.Q4_1.gguf OUT="${OUT:-/tmp/out}"
mkdir -p "$Q" "$OUT" /root/longctx-models
tar xJf "$repo/.devcarry/mini/tools.tar.xz" -C "$Q" || exit 1
export LD_LIBRARY_PATH="$Q/lib:${LD_LIBRARY_PATH:-}"
# SYNTH=SHAPE[:SEED] (llama3-8b:1): bench's random bf16 weights of that shape instead of SmolLM2, so one call
# (carrying .devcarry/mini alone) does it all; the forward test then needs the model and is skipped.
if [ -n "${SYNTH:-}" ]; then
  model=(--synthetic "$SYNTH") FORWARD=0
else
  cat /root/longctx-parts/part* | head -c 98362432 > "$M"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $M" | sha256sum -c || exit 1
  model=(-m "$M")
fi
nvidia-smi --query-gpu=name --format=csv,noheader
"$Q/bin/cuda_backend_ops_test" 2>&1 | grep -E "^\[  (FAILED|PASSED)|FAILED  \]|OK \] CudaBackendOps\.(Attention|KvMemory)"
[ "${FORWARD:-1}" = 1 ] &&  # FORWARD=0 skips the forward test (a minute or two) when device time is short
  LONGCTX_MODEL_DIR=/root/longctx-models timeout 240 "$Q/bin/cuda_forward_test" 2>&1 | grep -E "^\[  (FAILED|PASSED)|FAILED  \]"
BINS="${BINS:-longctx_old longctx}" DEPTH="${DEPTH:-8000}" KVS="${KVS:-full snapkv:budget=1024 tova:budget=1024 h2o:budget=1024}"
for kv in $KVS; do
  for b in $BINS; do
    printf '%-12s %-20s ' "$b" "$kv"
    "$Q/bin/$b" bench --device cuda "${model[@]}" -p 0 -n 128 -d "$DEPTH" -r 3 --kv "$kv" 2>&1 | grep "bench: tg128" || echo failed
  done
done
if [ "${PROFILE:-0}" = 1 ] && ! command -v nsys >/dev/null; then
  echo "PROFILE=1: no nsys on PATH (the lent machines have none that makes a report: /work/.library/device/KINDS.md)"
elif [ "${PROFILE:-0}" = 1 ]; then
  nsys profile -o "$OUT/tova" --force-overwrite true -t cuda,osrt --stats=false \
    "$Q/bin/longctx" bench --device cuda "${model[@]}" -p 0 -n 64 -d "$DEPTH" -r 1 --kv tova:budget=1024 >/dev/null 2>&1
  nsys stats -q --report cuda_gpu_kern_sum,cuda_api_sum --format csv "$OUT/tova.nsys-rep" 2>/dev/null |
    awk -F, 'NR < 3 || $2 + 0 > 1.0' | cut -c1-200 | head -50
  rm -f "$OUT"/tova.sqlite "$OUT"/tova.nsys-rep
fi
