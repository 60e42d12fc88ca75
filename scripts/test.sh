#!/usr/bin/env bash
# Builds and runs every test: the release build runs the whole suite; the debug build (ASan + UBSan) runs
# everything but the long end-to-end model tests, which take minutes under the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
scripts/build.sh release
ctest --test-dir build/release --output-on-failure -j "$jobs"
scripts/build.sh debug
ctest --test-dir build/debug --output-on-failure -j "$jobs" -LE slow
