#!/usr/bin/env bash
# The CUDA backend behind the one backend interface (src/backend/cuda/cuda_engine.h) on the GPU machine. That machine
# has nvcc but no fmt, Highway or GoogleTest, so nothing is built there: the binaries are built here in the cuda preset
# and carried in a bundle with the two shared libraries they need from this machine. The device tool sends the
# session's checkout, so the bundle goes into an ignored folder of that checkout (`.devcarry/`):
#
#   cmake --preset cuda && cmake --build build/cuda --target longctx cuda_backend_ops_test cuda_quant_gemv_test \
#     cuda_forward_test cuda_e2e_bench
#   scripts/cuda_device_backend.sh --stage DIR ops e2e  (this script and what the sections need: bin/, lib/, model/)
#   run command="DIR/cuda_device_backend.sh ops e2e"     carry=[DIR]
#
# Sections (any of them, in order):
#   ops  every backend op on the GPU against the CPU kernels (cuda_backend_ops_test), and the quantized GEMV's own test
#   e2e  the models' logits through Forward on both backends (cuda_forward_test) on GGUFs carried in model/: not the
#        real files (98 and 241 MB, over one call's 64 MiB carry) but files of the same architectures and tensor formats
#        made from them here by scripts/make_small_gguf.py (fewer blocks, the first 8192 embedding rows; needs the gguf
#        package); their sha256 is checked first.
#   bench `longctx bench` on both devices side by side: the cut gemma3 on cuda and cpu, and Llama-3-8B's shape with
#        synthetic bf16 weights through the engine on cuda against the dedicated synthetic decoder (cuda_e2e_bench, the
#        same seed's weights) at the same depth.
#   long  a long prompt through the engine on the GPU, Llama-3-8B's shape (synthetic bf16 weights): prefill rate at
#        depth, then 128K tokens prefilled in chunks of 4096 with the full cache and with SnapKV + 2-bit KIVI (selection
#        and packing after the prompt), decode at that depth in both, and the dedicated decoder at 128K beside them.
# Logs go to $OUT (the tool's return folder) or DIR/out.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" = --stage ]; then  # run here, from the repository: --stage DIR SECTION...
  D="$2"
  shift 2
  ROOT="$HERE/.."
  rm -rf "$D/bin" "$D/lib"
  mkdir -p "$D/bin" "$D/lib" "$D/model"
  cp "$0" "$D/"
  # Only what the sections run: bins and models together exceed one call's 64 MiB (with the tree).
  bins="" models=""
  for s in "$@"; do
    case "$s" in
      ops) bins="$bins tests/cuda/cuda_backend_ops_test" ;;  # cuda_quant_gemv_test too, staged by hand: space
      e2e) bins="$bins tests/cuda/cuda_forward_test"; models="$models smollm2 gemma3" ;;
      bench) bins="$bins longctx tests/cuda/cuda_e2e_bench"; models="$models gemma3" ;;
      long) bins="$bins longctx tests/cuda/cuda_e2e_bench" ;;
      *) echo "unknown section $s"; exit 2 ;;
    esac
  done
  bins=$(echo $bins | tr ' ' '\n' | sort -u)
  for b in $bins; do cp "$ROOT/build/cuda/$b" "$D/bin/"; done
  strip "$D"/bin/*
  # The shared libraries of this machine the binaries need and the GPU machine may lack (ldd build/cuda/longctx).
  for l in libhwy.so.1 libfmt.so.9 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$D/lib/"
  done
  MD="${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}"
  # The names cuda_forward_test looks for: 4 of SmolLM2's 30 blocks, 6 of gemma-3-270m's 18 (5 sliding-window
  # layers and a global one), each with the first 8192 rows of its embedding (make_small_gguf.py says why).
  case "$models" in *smollm2*) ;; *) rm -f "$D/model/smollm2-4l-v8k.gguf" ;; esac
  case "$models" in *gemma3*) ;; *) rm -f "$D/model/gemma3-6l-v8k.gguf" ;; esac
  case "$models" in *smollm2*) [ -e "$D/model/smollm2-4l-v8k.gguf" ] ||
    python3 "$ROOT/scripts/make_small_gguf.py" "$MD/SmolLM2-135M-Instruct.Q4_1.gguf" "$D/model/smollm2-4l-v8k.gguf" 4 --vocab 8192 ;; esac
  case "$models" in *gemma3*) [ -e "$D/model/gemma3-6l-v8k.gguf" ] ||
    python3 "$ROOT/scripts/make_small_gguf.py" "$MD/gemma-3-270m-q4_k_m.gguf" "$D/model/gemma3-6l-v8k.gguf" 6 --vocab 8192 ;; esac
  (cd "$D/model" && sha256sum ./*.gguf > SHA256SUMS)
  du -sh "$D"
  exit 0
fi
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$HERE/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
SECTIONS="${*:-ops}"
rc_all=0
summary=""
run_test() {  # name, binary, args...
  local name=$1 bin=$2
  shift 2
  "$bin" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  summary="$summary$name: rc $rc; "
  [ "$rc" = 0 ] || rc_all=1
}
for s in $SECTIONS; do
  case "$s" in
    ops)
      run_test backend_ops "$HERE/bin/cuda_backend_ops_test"
      [ -e "$HERE/bin/cuda_quant_gemv_test" ] && run_test quant_gemv "$HERE/bin/cuda_quant_gemv_test"
      ;;
    e2e)
      (cd "$HERE/model" && sha256sum -c SHA256SUMS) || { echo "model checksum FAILED"; exit 1; }
      LONGCTX_MODEL_DIR="$HERE/model" run_test forward "$HERE/bin/cuda_forward_test"
      ;;
    bench)
      (cd "$HERE/model" && sha256sum -c SHA256SUMS) || { echo "model checksum FAILED"; exit 1; }
      for dev in cuda cpu; do
        run_test "bench_gemma3_$dev" "$HERE/bin/longctx" bench -m "$HERE/model/gemma3-6l-v8k.gguf" --device "$dev" \
          -p 512 -n 64 -d 0,2048 -r 3
      done
      run_test bench_llama3_8b_engine timeout 300 "$HERE/bin/longctx" bench --synthetic llama3-8b:1 --device cuda -p 512 -n 64 \
        -d 0,4096 -r 3
      run_test bench_llama3_8b_engine_snapkv_kivi2 timeout 200 "$HERE/bin/longctx" bench --synthetic llama3-8b:1 \
        --device cuda --kv snapkv:budget=512+kivi:bits=2,residual=64 -p 0 -n 64 -d 4096 -r 3
      run_test bench_llama3_8b_decoder "$HERE/bin/cuda_e2e_bench" "$OUT/e2e.jsonl" 4096
      ;;
    long)
      L8="$HERE/bin/longctx bench --synthetic llama3-8b:1 --device cuda -b 4096"
      run_test long_pp_8b timeout 200 $L8 -p 4096 -n 32 -d 0,32768 -r 2
      run_test long_128k_full timeout 300 $L8 -p 0 -n 32 -d 131040 -r 1
      run_test long_128k_snapkv_kivi2 timeout 300 $L8 --kv snapkv:budget=4096+kivi:bits=2,residual=128 -p 0 -n 32 \
        -d 131040 -r 1
      run_test long_128k_decoder timeout 120 "$HERE/bin/cuda_e2e_bench" "$OUT/e2e_128k.jsonl" 131072
      ;;
    *) echo "unknown section $s"; exit 2 ;;
  esac
done
echo
echo "summary: $summary"
grep -h -E "^\[  (FAILED|PASSED) |FAILED  \]|tests ran|^FAIL|^\| |worst|error|filled in" "$OUT"/*.txt | head -80
exit $rc_all
