#!/usr/bin/env bash
# Decode with per-step eviction (TOVA, H2O) on the GPU against the full cache and SnapKV at the same budget, and an
# nsys profile of one TOVA run: where a step's time goes beside the forward (scores to the host, ranking, compaction).
# Runs on the device machine after cuda_device_quality.sh assembled the models (see that script's header):
#   run command="scripts/cuda_device_real.sh add .devcarry/real/p1 && .devcarry/quality/cuda_device_quality.sh && \
#                scripts/cuda_device_eviction.sh" carry=[".devcarry/real/p1", ".devcarry/quality"]
# BINS: the binaries to compare (default the staged one; an older build staged beside it as bin/longctx_old too).
set -uo pipefail
Q="$(cd "$(dirname "$0")/.." && pwd)/.devcarry/quality" OUT="${OUT:-/tmp/out}" M=/root/longctx-models/smollm2.gguf
export LD_LIBRARY_PATH="$Q/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$OUT"
BINS="${BINS:-longctx}" DEPTH="${DEPTH:-8000}"
for kv in full snapkv:budget=1024 tova:budget=1024 h2o:budget=1024 tova:budget=410; do
  for b in $BINS; do
    printf '%-12s %-22s ' "$b" "$kv"
    "$Q/bin/$b" bench --device cuda -m "$M" -p 0 -n 128 -d "$DEPTH" -r 3 --kv "$kv" 2>&1 | grep "bench: tg128" || echo failed
  done
done
if [ "${PROFILE:-1}" = 1 ] && command -v nsys >/dev/null; then
  nsys profile -o "$OUT/tova" --force-overwrite true -t cuda,osrt --stats=false \
    "$Q/bin/longctx" bench --device cuda -m "$M" -p 0 -n 64 -d "$DEPTH" -r 1 --kv tova:budget=1024 >/dev/null 2>&1
  nsys stats -q --report cuda_gpu_kern_sum,cuda_api_sum --format csv "$OUT/tova.nsys-rep" 2>/dev/null |
    awk -F, 'NR < 3 || $2 + 0 > 1.0' | cut -c1-220 | head -60
  rm -f "$OUT"/tova.sqlite
fi
