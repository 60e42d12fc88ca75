#!/usr/bin/env bash
# A/B of two builds of the end-to-end decode bench on the GPU (issue 6): the working tree's (built by
# scripts/cuda_device_e2e.sh, which must run first in the same call) against a baseline tree, each in its own
# process, quick mode (E2E_QUICK=1: the default path's decode alone; a baseline older than 26395c1 runs its whole
# bench instead, which only takes longer), alternated three times; prints us/token.
# The baseline is a folder holding src/ and tests/ of another commit, made here before the call, e.g.
#   mkdir -p scratch/base && git archive 26395c1 src tests | tar -x -C scratch/base
# and then, through the device tool:
#   run command="E2E_CHECK_ONLY=1 scripts/cuda_device_e2e.sh && scripts/cuda_device_ab_e2e.sh scratch/base 4096 32768"
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
BASE="${1:?usage: cuda_device_ab_e2e.sh BASELINE_TREE [contexts...]}"
shift
NEW=build/cuda_device_e2e/e2e_bench
[ -x "$NEW" ] || { echo "run scripts/cuda_device_e2e.sh first (no $NEW)"; exit 1; }
NV=(nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I"$BASE/src")
B=build/cuda_device_ab_e2e
mkdir -p "$B"
objs=()
for f in "$BASE"/src/backend/cuda/*.cu "$BASE"/src/backend/cuda/*.cpp "$BASE"/src/core/synthetic_weights.cpp; do
  [[ "$f" == */cuda_engine.cpp ]] && continue  # CudaBackend needs fmt and the CPU codec, absent from this build
  o="$B/$(basename "${f%.*}").o"
  "${NV[@]}" -c "$f" -o "$o" & objs+=("$o")
done
"${NV[@]}" -c "$BASE/tests/cuda/e2e_bench.cu" -o "$B/e2e_bench.o" &
wait
"${NV[@]}" -o "$B/e2e_bench" "$B/e2e_bench.o" "${objs[@]}" -lcublasLt || { echo "baseline build failed"; exit 1; }
for rep in 1 2 3; do
  E2E_QUICK=1 "$B/e2e_bench" /dev/null "$@" >"$B/base.$rep.txt" 2>&1
  E2E_QUICK=1 "$NEW" /dev/null "$@" >"$B/new.$rep.txt" 2>&1
done
echo "--- A/B (us/token, fused GEMV path, one figure per round): baseline $BASE against the working tree"
for t in base new; do
  for f in "$B"/"$t".[123].txt; do grep -h "fused GEMV:" "$f" | sed -E 's/^ctx ([0-9]+), fused GEMV: ([0-9.]+) us.*/\1 \2/'; done |
    awk -v t="$t" '{a[$1]=a[$1]" "$2} END {for (c in a) print "  " t ", ctx " c ":" a[c]}'
done
grep -h "copy (D2D" "$B"/new.*.txt
