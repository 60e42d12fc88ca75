#!/usr/bin/env bash
# End-to-end decode on the GPU (issue 6): builds the CUDA backend, its op and end-to-end tests and the synthetic
# Llama-3-8B decode benchmark with nvcc alone (the GPU machine has no fmt/Highway/GoogleTest, and needs none here),
# checks every op and the tiny model's logits against host references, times decode at 4K and 32K context against
# the copy and read-only rooflines measured in the same call, and prints a table last.
# Through the device tool, from the repository root:   run command="scripts/cuda_device_e2e.sh"
# Logs and JSON lines go to $OUT (the tool's return folder) or build/cuda_device_e2e/out.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
B=build/cuda_device_e2e
OUT="${OUT:-$B/out}"
mkdir -p "$B" "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader || true

ARCH="-gencode=arch=compute_90a,code=sm_90a"  # 90a: the backend holds the wgmma prefill kernel
NVCC=(nvcc -std=c++17 -O3 -Isrc "$ARCH")  # C++17: what CMake 3.25 can ask nvcc for
t0=$(date +%s)
# Every backend source, so that whatever else the backend holds links too; one nvcc per file, in parallel.
srcs=(src/backend/cuda/*.cu src/backend/cuda/*.cpp src/core/synthetic_weights.cpp tests/cuda/ops_test.cpp tests/cuda/llama_decode_test.cpp tests/cuda/e2e_bench.cu)
pids=()
for f in "${srcs[@]}"; do
  [ -e "$f" ] || continue
  [[ "$f" == */cuda_engine.cpp ]] && continue  # CudaBackend needs fmt and the CPU codec, which this nvcc-only build lacks
  o="$B/$(basename "${f%.*}").o"
  "${NVCC[@]}" -Xptxas -v -c "$f" -o "$o" >"$o.log" 2>&1 & pids+=($!)
done
build_ok=1
for p in "${pids[@]}"; do wait "$p" || build_ok=0; done
lib=()
for f in src/backend/cuda/*.cu src/backend/cuda/*.cpp src/core/synthetic_weights.cpp; do
  [ -e "$f" ] && [[ "$f" != */cuda_engine.cpp ]] && lib+=("$B/$(basename "${f%.*}").o")
done
if [ "$build_ok" = 1 ]; then
  for t in ops_test llama_decode_test e2e_bench; do
    "${NVCC[@]}" -o "$B/$t" "$B/$t.o" "${lib[@]}" -lcublasLt || build_ok=0
  done
fi
echo "build: $([ $build_ok = 1 ] && echo ok || echo FAILED) in $(( $(date +%s) - t0 )) s"
if [ "$build_ok" != 1 ]; then grep -h -B2 -A6 -i "error" "$B"/*.o.log | head -80; exit 1; fi
echo "registers / spills of the decode-step kernels:"
for k in embedding rmsnorm rope_kv_append gated_activation argmax synthetic gemv l2_prefetch; do
  grep -E "registers|spill" "$B/$k.o.log" | sed "s/^/  $k: /; s/ptxas info *: //" | grep -v " 0 bytes spill" | head -3
done

"$B/ops_test" 2>&1 | tee "$OUT/ops_check.txt"
ops_rc=${PIPESTATUS[0]}
"$B/llama_decode_test" 2>&1 | tee "$OUT/e2e_check.txt"
e2e_rc=${PIPESTATUS[0]}
bench_rc=0
if [ -z "${E2E_CHECK_ONLY:-}" ]; then  # E2E_CHECK_ONLY=1: the checks alone, no timings
  "$B/e2e_bench" "$OUT/e2e.jsonl" "$@" 2>&1 | tee "$OUT/e2e_bench.txt"
  bench_rc=${PIPESTATUS[0]}
fi
if [ -n "${E2E_SWEEP:-}" ]; then  # variants of the fused GEMV (docs/cuda-backend-notes.md): no programmatic dependent launch; 8 loads in flight
  "$B/e2e_bench" "$OUT/e2e_nopdl.jsonl" --pdl=0 "$@" 2>&1 | tee "$OUT/e2e_bench_nopdl.txt"
  "$B/e2e_bench" "$OUT/e2e_unroll8.jsonl" --gemv-unroll=8 "$@" 2>&1 | tee "$OUT/e2e_bench_unroll8.txt"
fi
if [ -n "${E2E_AB:-}" ]; then  # A/B of settings, alternated 3 times, each a process of its own: E2E_AB="base --pdl=0 --gemv-unroll=8" (e2e_bench's settings)
  for rep in 1 2 3; do
    for v in $E2E_AB; do
      if [ "$v" = base ]; then env E2E_QUICK=1 "$B/e2e_bench" /dev/null "$@" >"$B/ab_$v.$rep.txt" 2>&1
      else env E2E_QUICK=1 "$B/e2e_bench" /dev/null "$v" "$@" >"$B/ab_$v.$rep.txt" 2>&1; fi
    done
  done
fi

echo
echo "checks: ops $([ "$ops_rc" = 0 ] && echo PASSED || echo "FAILED (rc $ops_rc)"), end to end $([ "$e2e_rc" = 0 ] && echo PASSED || echo "FAILED (rc $e2e_rc)"), bench rc $bench_rc"
grep -E "^(FAIL|ok   tiny|ok   gemm)" "$OUT/ops_check.txt" "$OUT/e2e_check.txt" | cut -c1-220
if [ -n "${E2E_SWEEP:-}" ]; then
  for v in nopdl unroll8; do echo "--- variant $v:"; sed -n '/^| decode/,$p' "$OUT/e2e_bench_$v.txt" | grep fused; done
  echo "--- default (PDL on, 4 loads in flight per row):"
fi
if [ -n "${E2E_AB:-}" ]; then
  echo "--- A/B (us/token, alternated): setting, context, then one figure per round"
  for v in $E2E_AB; do
    for f in "$B"/ab_"$v".[123].txt; do grep -h "fused GEMV:" "$f" | sed -E 's/^ctx ([0-9]+), fused GEMV: ([0-9.]+) us.*/\1 \2/'; done |
      awk -v v="$v" '{a[$1]=a[$1]" "$2} END {for (c in a) print "  " v ", ctx " c ":" a[c]}'
  done
fi
[ -z "${E2E_CHECK_ONLY:-}" ] && sed -n '/^| GEMV/,$p' "$OUT/e2e_bench.txt"
[ "$ops_rc" = 0 ] && [ "$e2e_rc" = 0 ] && [ "$bench_rc" = 0 ]
