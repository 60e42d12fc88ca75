#!/usr/bin/env bash
# Builds and runs every test: the release build runs the whole suite; the debug build (ASan + UBSan) runs
# everything but the long end-to-end model tests, which take minutes under the sanitizers; then the fuzz targets
# run for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
scripts/build.sh release
ctest --test-dir build/release --output-on-failure -j "$jobs"
scripts/build.sh debug
ctest --test-dir build/debug --output-on-failure -j "$jobs" -LE slow
# The libFuzzer targets (GGUF reader, tokenizer) under ASan + UBSan, a minute each on a copy of the committed
# seeds, both at once; a crash, leak or broken property fails the run and leaves its input in build/fuzz/artifacts.
fuzz/run.sh 60
# The CUDA backend where nvcc is (CI has it, no GPU): its sources and tests compile (sm_90a only, to keep it short),
# the host-only test runs, and the GPU tests exit 77, which CTest counts as skipped. The GPU run itself is
# scripts/cuda_device_run.sh and scripts/cuda_device_e2e.sh on a device machine.
if command -v nvcc >/dev/null 2>&1; then
  cmake --preset cuda >/dev/null
  cmake --build build/cuda --target tests/cuda/all
  ctest --test-dir build/cuda --output-on-failure -j "$jobs" -R '^cuda_'
else
  echo "test.sh: no nvcc on PATH, the CUDA backend is not compiled"
fi
