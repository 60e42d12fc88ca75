#!/usr/bin/env bash
# The CUDA backend's one device script (issue 6): builds the tests and benchmarks with nvcc alone (the GPU machine has
# no fmt/Highway/GoogleTest, and needs none of them for this), checks every kernel against its CPU reference, times
# the kernels against the device's measured ceilings and torch SDPA in the same call, and prints a table last.
# Through the device tool, from the repository root:   run command="scripts/cuda_device_run.sh [decode] [prefill]"
# (both sections when neither is named: decode attention, KIVI pages and policy scores; prefill attention).
# Logs and JSON lines go to $OUT (the tool's return folder) or build/cuda_device/out.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
B=build/cuda_device
OUT="${OUT:-$B/out}"
mkdir -p "$B" "$OUT"
SECTIONS="${*:-decode prefill}"
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader || true

ARCH="-gencode=arch=compute_90a,code=sm_90a"  # 90a: wgmma (the Hopper prefill kernel) is an sm_90a feature
NVCC=(nvcc -std=c++17 -O3 -Isrc "$ARCH")  # C++17: what CMake 3.25 can ask nvcc for
t0=$(date +%s)
pids=()
"${NVCC[@]}" -Xptxas -v -c src/backend/cuda/decode_attention.cu -o "$B/decode_attention.o" >"$B/ptxas.log" 2>&1 & pids+=($!)
"${NVCC[@]}" -c src/backend/cuda/cuda_backend.cu -o "$B/cuda_backend.o" & pids+=($!)
"${NVCC[@]}" -c src/backend/cuda/kivi_page.cpp -o "$B/kivi_page.o" & pids+=($!)
"${NVCC[@]}" -c src/backend/cuda/attention_scores.cu -o "$B/attention_scores.o" & pids+=($!)
"${NVCC[@]}" -c tests/cuda/attention_scores_test.cpp -o "$B/attention_scores_test.o" & pids+=($!)
"${NVCC[@]}" -c tests/cuda/decode_attention_test.cpp -o "$B/decode_attention_test.o" & pids+=($!)
"${NVCC[@]}" -c tests/cuda/attention_bench.cu -o "$B/attention_bench.o" & pids+=($!)
"${NVCC[@]}" -Xptxas -v -c src/backend/cuda/prefill_attention.cu -o "$B/prefill_attention.o" >"$B/ptxas_prefill.log" 2>&1 & pids+=($!)
"${NVCC[@]}" -Xptxas -v -c src/backend/cuda/prefill_attention_wgmma.cu -o "$B/prefill_attention_wgmma.o" >"$B/ptxas_wgmma.log" 2>&1 & pids+=($!)
"${NVCC[@]}" -c tests/cuda/prefill_attention_test.cpp -o "$B/prefill_attention_test.o" & pids+=($!)
"${NVCC[@]}" -c tests/cuda/prefill_bench.cu -o "$B/prefill_bench.o" & pids+=($!)
build_ok=1
for p in "${pids[@]}"; do wait "$p" || build_ok=0; done
cat "$B/ptxas.log" "$B/ptxas_prefill.log" "$B/ptxas_wgmma.log" | grep -E "Compiling entry|registers" | sed -E "s/.*entry function '([^']*)'.*/\1/; s/ptxas info *: //" |
  c++filt | paste - - | sed -E 's/longctx::cuda::\(anonymous namespace\):://g' | cut -c1-150
if [ "$build_ok" = 1 ]; then
  LIB=("$B/decode_attention.o" "$B/cuda_backend.o" "$B/kivi_page.o" "$B/attention_scores.o" "$B/prefill_attention.o"
       "$B/prefill_attention_wgmma.o")
  "${NVCC[@]}" -o "$B/decode_attention_test" "$B/decode_attention_test.o" "${LIB[@]}" &&
    "${NVCC[@]}" -o "$B/attention_scores_test" "$B/attention_scores_test.o" "${LIB[@]}" &&
    "${NVCC[@]}" -o "$B/attention_bench" "$B/attention_bench.o" "${LIB[@]}" &&
    "${NVCC[@]}" -o "$B/prefill_attention_test" "$B/prefill_attention_test.o" "${LIB[@]}" &&
    "${NVCC[@]}" -o "$B/prefill_bench" "$B/prefill_bench.o" "${LIB[@]}" || build_ok=0
fi
echo "build: $([ $build_ok = 1 ] && echo ok || echo FAILED) in $(( $(date +%s) - t0 )) s"
[ "$build_ok" = 1 ] || { cat "$B/ptxas.log" "$B/ptxas_prefill.log" "$B/ptxas_wgmma.log"; exit 1; }
check="" ours=()
check_rc=0 scores_rc=0 prefill_rc=0
if has decode; then
  # Instances: decode_attention_kernel<T, D, Bits>, Bits 0 = plain pages only, 2/4/8 = KIVI pages too.
  for inst in "Li128ELi0E:bf16 d=128 plain" "Li128ELi2E:bf16 d=128 kivi2"; do
    echo "SASS of the ${inst#*:} decode kernel (cp.async copies, shared reads, tensor-core ops, f16x2 math, no local memory):"
    cuobjdump -sass "$B/decode_attention.o" 2>/dev/null |
      awk -v pat="decode_attention_kernelI13__nv_bfloat16${inst%%:*}" '/Function :/{inside = index($3, pat) > 0} inside' |
      grep -oE "LDGSTS[.A-Z0-9_]*|LDS[.A-Z0-9_]*|LDG\.E[.A-Z0-9_]*|HMMA\.[0-9A-Z.]*|MOVM[.A-Z0-9]*|HFMA2[.A-Z0-9]*|HADD2[.A-Z0-9]*|LOP3[.A-Z0-9]*|LDL|STL" |
      sort | uniq -c | tr '\n' ' ' || true
    echo
  done

  "$B/decode_attention_test" 2>&1 | tee "$OUT/check.txt"
  check_rc=${PIPESTATUS[0]}
  "$B/attention_scores_test" 2>&1 | tee "$OUT/check_scores.txt"
  scores_rc=${PIPESTATUS[0]}
  check="${check}decode attention $([ "$check_rc" = 0 ] && echo PASSED || echo "FAILED (rc $check_rc)") ($(grep -c '^ok' "$OUT/check.txt") cases)"
  check="$check; attention scores $([ "$scores_rc" = 0 ] && echo PASSED || echo "FAILED (rc $scores_rc)") ($(grep -c '^ok' "$OUT/check_scores.txt") cases)"

  "$B/attention_bench" "$OUT/ours.jsonl" 2>&1 | tee "$OUT/bench.txt"
  ours+=("$OUT/ours.jsonl")
fi
if has prefill; then
  "$B/prefill_attention_test" 2>&1 | tee "$OUT/check_prefill.txt"
  prefill_rc=${PIPESTATUS[0]}
  check="${check:+$check; }prefill attention $([ "$prefill_rc" = 0 ] && echo PASSED || echo "FAILED (rc $prefill_rc)") ($(grep -c '^ok' "$OUT/check_prefill.txt") cases)"
  "$B/prefill_bench" "$OUT/prefill.jsonl" 2>&1 | tee "$OUT/prefill.txt"
  ours+=("$OUT/prefill.jsonl")
fi
PYTHONUNBUFFERED=1 python3 tests/cuda/torch_sdpa_bench.py "$OUT/torch.jsonl" $SECTIONS 2>&1 | tee "$OUT/torch.txt"
cat "${ours[@]}" > "$OUT/all.jsonl"
python3 tests/cuda/report.py "$OUT/all.jsonl" "$OUT/torch.jsonl" "$check"
[ "$check_rc" = 0 ] && [ "$scores_rc" = 0 ] && [ "$prefill_rc" = 0 ]
