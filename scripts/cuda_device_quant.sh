#!/usr/bin/env bash
# GGUF weight formats on the GPU: builds the quantized GEMV, the dequantization to bf16, their test and their
# benchmark with nvcc alone (the GPU machine has no fmt/Highway/GoogleTest, and needs none here), checks every format
# against the host reference (tests/cuda/quant_reference.h, tied to cpu::dequantize_row by tests/quant_reference_test),
# then times the Llama-3-8B shapes against the copy and read-only ceilings measured in the same run; a table last.
# Through the device tool, from the repository root:   run command="scripts/cuda_device_quant.sh"
# Logs and JSON lines go to $OUT (the tool's return folder) or build/cuda_device_quant/out.
# QGEMV_FLAGS="-DLONGCTX_QGEMV_STAGES=3" builds a variant (in build/cuda_device_quant_<name>, QGEMV_NAME=<name>).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
B=build/cuda_device_quant${QGEMV_NAME:+_$QGEMV_NAME}
OUT="${OUT:-$B/out}"
mkdir -p "$B" "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader || true

ARCH="-gencode=arch=compute_90a,code=sm_90a"
NVCC=(nvcc -std=c++17 -O3 -Isrc "$ARCH" ${QGEMV_FLAGS:-})  # C++17: what CMake 3.25 can ask nvcc for
t0=$(date +%s)
lib=(src/backend/cuda/cuda_backend.cu src/backend/cuda/quant_gemv.cu src/backend/cuda/dequantize.cu
     src/backend/cuda/gemv.cu)  # gemv.cu: the decode step's bf16 GEMV, timed beside the quantized one
pids=()
for f in "${lib[@]}" tests/cuda/quant_gemv_test.cpp tests/cuda/quant_bench.cu; do
  o="$B/$(basename "${f%.*}").o"
  "${NVCC[@]}" -Xptxas -v -c "$f" -o "$o" >"$o.log" 2>&1 & pids+=($!)
done
build_ok=1
for p in "${pids[@]}"; do wait "$p" || build_ok=0; done
objs=()
for f in "${lib[@]}"; do objs+=("$B/$(basename "${f%.*}").o"); done
if [ "$build_ok" = 1 ]; then
  for t in quant_gemv_test quant_bench; do "${NVCC[@]}" -o "$B/$t" "$B/$t.o" "${objs[@]}" || build_ok=0; done
fi
echo "build: $([ $build_ok = 1 ] && echo ok || echo FAILED) in $(( $(date +%s) - t0 )) s"
if [ "$build_ok" != 1 ]; then grep -h -B2 -A6 -i "error" "$B"/*.o.log | head -80; exit 1; fi
echo "registers / spills:"
for k in quant_gemv dequantize; do
  awk '/Compiling entry/ { match($0, /(quant_gemv_kernelILNS_8GgmlTypeE[0-9]+|gemv_f32_kernel|dequantize_bf16_kernel)/);
                           name = substr($0, RSTART, RLENGTH); sub(/ILNS_8GgmlTypeE/, "<type ", name) }
       /spill stores/ { spill = $0; sub(/^[ \t]*/, "", spill) }
       /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); print "  " name (name ~ /</ ? ">" : "") ": " substr($0, RSTART, RLENGTH) ", " spill }' "$B/$k.o.log"
done
# The instruction mix of the window loop of three instances (static counts of the unrolled code), to set against
# the per-weight budget (BENCHMARKS.md): tensor-core products, shared loads, bit operations, f16x2 arithmetic.
for id in 8 12 14; do
  echo "SASS of quant_gemv_kernel<$id> (most frequent opcodes):"
  cuobjdump -sass "$B/quant_gemv.o" 2>/dev/null |
    awk -v pat="GgmlTypeE${id}EE" '/Function :/{inside = index($0, pat) > 0} inside' |
    sed -nE 's/^[[:space:]]+\/\*[0-9a-f]+\*\/[[:space:]]+(@!?U?P[0-9T] )?([A-Z0-9]+(\.[A-Z0-9_]+)?).*/\2/p' |
    sort | uniq -c | sort -rn | head -16 | tr '\n' ' ' || true
  echo
done

"$B/quant_gemv_test" 2>&1 | tee "$OUT/check.txt"
check_rc=${PIPESTATUS[0]}
"$B/quant_bench" "$OUT/quant.jsonl" 2>&1 | tee "$OUT/bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "check: $([ "$check_rc" = 0 ] && echo PASSED || echo "FAILED (rc $check_rc)") ($(grep -c '^ok' "$OUT/check.txt") ok, $(grep -c '^FAIL' "$OUT/check.txt") failed)"
[ "$check_rc" = 0 ] && [ "$bench_rc" = 0 ]
