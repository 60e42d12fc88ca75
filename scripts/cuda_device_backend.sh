#!/usr/bin/env bash
# The CUDA backend behind the one backend interface (src/backend/cuda/cuda_engine.h) on the GPU machine. That machine
# has nvcc but no fmt, Highway or GoogleTest, so nothing is built there: the binaries are built here in the cuda preset
# and carried in a bundle with the two shared libraries they need from this machine. The device tool sends the
# session's checkout, so the bundle goes into an ignored folder of that checkout (`.devcarry/`):
#
#   cmake --preset cuda && cmake --build build/cuda --target cuda_backend_ops_test cuda_quant_gemv_test cuda_forward_test
#   scripts/cuda_device_backend.sh --stage DIR        (copies this script, bin/, lib/ and model/ into DIR)
#   run command="DIR/cuda_device_backend.sh ops e2e"  carry=[DIR]
#
# Sections (any of them, in order):
#   ops  every backend op on the GPU against the CPU kernels (cuda_backend_ops_test), and the quantized GEMV's own test
#   e2e  the models' logits through Forward on both backends (cuda_forward_test) on GGUFs carried in model/: not the
#        real files (98 and 241 MB, over one call's 64 MiB carry) but files of the same architectures and tensor formats
#        made from them here by scripts/make_small_gguf.py (fewer blocks, the first 8192 embedding rows; needs the gguf
#        package); their sha256 is checked first.
# Logs go to $OUT (the tool's return folder) or DIR/out.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" = --stage ]; then  # run here, from the repository
  D="$2"
  ROOT="$HERE/.."
  mkdir -p "$D/bin" "$D/lib" "$D/model"
  cp "$0" "$D/"
  for t in cuda_backend_ops_test cuda_quant_gemv_test cuda_forward_test; do
    [ -e "$ROOT/build/cuda/tests/cuda/$t" ] && cp "$ROOT/build/cuda/tests/cuda/$t" "$D/bin/"
  done
  cp -L /usr/lib/x86_64-linux-gnu/libhwy.so.1 /usr/lib/x86_64-linux-gnu/libfmt.so.9 "$D/lib/"
  MD="${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}"
  # The names cuda_forward_test looks for: 8 of SmolLM2's 30 blocks, 6 of gemma-3-270m's 18 (5 sliding-window
  # layers and a global one), each with the first 8192 rows of its embedding (make_small_gguf.py says why).
  [ -e "$D/model/smollm2-8l-v8k.gguf" ] ||
    python3 "$ROOT/scripts/make_small_gguf.py" "$MD/SmolLM2-135M-Instruct.Q4_1.gguf" "$D/model/smollm2-8l-v8k.gguf" 8 --vocab 8192
  [ -e "$D/model/gemma3-6l-v8k.gguf" ] ||
    python3 "$ROOT/scripts/make_small_gguf.py" "$MD/gemma-3-270m-q4_k_m.gguf" "$D/model/gemma3-6l-v8k.gguf" 6 --vocab 8192
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
      run_test quant_gemv "$HERE/bin/cuda_quant_gemv_test"
      ;;
    e2e)
      (cd "$HERE/model" && sha256sum -c SHA256SUMS) || { echo "model checksum FAILED"; exit 1; }
      LONGCTX_MODEL_DIR="$HERE/model" run_test forward "$HERE/bin/cuda_forward_test"
      ;;
    *) echo "unknown section $s"; exit 2 ;;
  esac
done
echo
echo "summary: $summary"
grep -h -E "^\[  (FAILED|PASSED) |FAILED  \]|tests ran|^FAIL|tok/s" "$OUT"/*.txt | head -60
exit $rc_all
