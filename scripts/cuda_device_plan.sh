#!/usr/bin/env bash
# `longctx bench --device cuda` on the synthetic Llama-3-8B shape at the contexts issue 18 names (4K-128K, full and
# compressed), as JSON lines for `longctx plan` to be compared with (scripts/plan_vs_bench.py). The tools travel
# xz-packed as cuda_device_eviction.sh stages them (its longctx binary is the one timed).
#
#   scripts/cuda_device_eviction.sh --stage OLD_BINARY      (here: .devcarry/mini/tools.tar.xz from build/cuda)
#   run command="scripts/cuda_device_plan.sh" carry=[".devcarry/mini"]        ($OUT/plan_gpu.jsonl comes back)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
Q=/root/plan OUT="${OUT:-/tmp/out}"
mkdir -p "$Q" "$OUT"
tar xJf "$repo/.devcarry/mini/tools.tar.xz" -C "$Q" || exit 1
export LD_LIBRARY_PATH="$Q/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
J="$OUT/plan_gpu.jsonl"
: > "$J"
bench() {  # KV_SPEC BENCH_ARGS...: prints the records, appends them to $J with the spec beside
  local kv="$1"
  shift
  echo "+ longctx bench --kv $kv $*"
  "$Q/bin/longctx" bench --device cuda --synthetic llama3-8b:1 -b 4096 --json --kv "$kv" "$@" > "$OUT/last.txt" 2>&1
  grep "^{" "$OUT/last.txt" | sed "s/^{/{\"kv_spec\":\"$kv\",/" | tee -a "$J" | cut -c1-200
  grep -q "^{" "$OUT/last.txt" || tail -3 "$OUT/last.txt"
}
C="snapkv:budget=4096+kivi:bits=2"
bench full -p 4096 -n 32 -d 0,32768 -r 2
bench "$C" -p 4096 -n 32 -d 32768 -r 1
bench full -p 0 -n 32 -d 131040 -r 1
bench "$C" -p 0 -n 32 -d 131040 -r 1
wc -l "$J"
