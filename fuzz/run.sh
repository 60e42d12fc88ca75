#!/usr/bin/env bash
# Builds the libFuzzer targets (the fuzz preset: clang, ASan + UBSan) and runs both at once, each for a bounded
# time on a copy of its committed seed corpus (the copy takes the new inputs; fuzz/corpus stays as committed).
# Fails when either finds a crash, a sanitizer report, a leak, a slow input or a broken property, and leaves the
# input that did it in build/fuzz/artifacts/ (rerun it: build/fuzz/fuzz/<target> FILE).
# usage: fuzz/run.sh [SECONDS_EACH]   (default 60; scripts/test.sh runs it; the models come from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz/run.sh: clang++ is not on PATH (the fuzz targets need clang and libFuzzer): run scripts/setup.sh" >&2
  exit 1
fi
cmake --preset fuzz >/dev/null
cmake --build build/fuzz --target gguf_fuzz tokenizer_fuzz

run=build/fuzz/run
rm -rf "$run" build/fuzz/artifacts
mkdir -p "$run" build/fuzz/artifacts
targets=(gguf tokenizer)
pids=()
for t in "${targets[@]}"; do
  cp -r "fuzz/corpus/$t" "$run/corpus-$t"
  # -timeout: an input that takes 30 s is a bug (a quadratic path), not a slow machine.
  "build/fuzz/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2560 -max_len=4096 \
    -print_final_stats=1 -dict="fuzz/corpus/$t.dict" -artifact_prefix="build/fuzz/artifacts/$t-" \
    "$run/corpus-$t" >"$run/$t.log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!targets[@]}"; do
  t="${targets[$i]}"
  if wait "${pids[$i]}"; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/$t.log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run/$t.log")"
    echo "fuzz: ${t}_fuzz ok: ${runs:-?} inputs in ${seconds} s (${rate:-?}/s), corpus $(ls "$run/corpus-$t" | wc -l) files"
  else
    failed=1
    echo "fuzz: ${t}_fuzz FAILED; the end of its log ($run/$t.log):" >&2
    tail -n 60 "$run/$t.log" >&2
    ls build/fuzz/artifacts/"$t"-* >&2 2>/dev/null || true
  fi
done
exit "$failed"
