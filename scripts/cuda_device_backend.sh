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
#   e2e  a model's logits through Forward on both backends (cuda_forward_test) on a GGUF carried in model/: not the
#        98 MB SmolLM2 file (over one call's 64 MiB carry) but its first 8 blocks with every tensor's format and bytes
#        kept, made here by scripts/make_small_gguf.py (needs the gguf package); its sha256 is checked first.
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
  M="$D/model/SmolLM2-135M-Instruct.Q4_1.gguf"  # the name the tests look for; 8 of its 30 blocks
  [ -e "$M" ] || python3 "$ROOT/scripts/make_small_gguf.py" "${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}/SmolLM2-135M-Instruct.Q4_1.gguf" "$M" 8
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
