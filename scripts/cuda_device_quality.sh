#!/usr/bin/env bash
# The KV-compression quality table (scripts/quality_table.py) on the GPU machine, where `longctx eval --device cuda`
# runs the cases at 8K-32K in minutes rather than the hours 2 CPU cores take. The model files travel in parts as
# scripts/cuda_device_real.sh brings them (its `--stage` and `add` calls); this script brings the tools:
#
#   scripts/cuda_device_real.sh --stage .devcarry/real          (model parts p0 .. p7; p0, p1 hold SmolLM2 whole)
#   scripts/cuda_device_quality.sh --stage .devcarry/quality    (bin/longctx of the cuda preset, lib/, data/, scripts)
#   run command="scripts/cuda_device_real.sh add .devcarry/real/pN" carry=[".devcarry/real/pN"]   N = 0 .. 7
#   run command=".devcarry/quality/cuda_device_quality.sh TABLE..." carry=[".devcarry/quality"]
#
# TABLE is MODEL:LENGTHS[:RATIOS] with MODEL smollm2 or gemma (e.g. smollm2:8k gemma:8k,16k,32k:8,20); METHODS,
# TASKS, DEPTHS, SEEDS and MODES override quality_table.py's choices. Each table's eval JSONs and quality_table.md go to
# $OUT/MODEL (quality_table.py goes on from a JSON already there, so a table cut off by the call's time limit is
# finished by a later call given the same folder back: copy what came back into $OUT/MODEL first).
set -uo pipefail
if [ "${1:-}" = "--stage" ]; then
  D="$2" repo="$(cd "$(dirname "$0")/.." && pwd)"
  rm -rf "$D" && mkdir -p "$D/bin" "$D/lib" "$D/data"
  cp "$repo/build/cuda/longctx" "$D/bin/" && strip "$D/bin/longctx"
  for l in libhwy.so.1 libfmt.so.9 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$D/lib/"
  done
  cp "$repo/data/kjv.txt" "$D/data/" && cp "$0" "$repo/scripts/quality_table.py" "$D/"
  du -sh "$D"
  exit 0
fi

HERE="$(cd "$(dirname "$0")" && pwd)" OUT="${OUT:-$HERE/out}" PARTS=/root/longctx-parts MODELS=/root/longctx-models
export LD_LIBRARY_PATH="$HERE/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$OUT" "$MODELS"
# The parts as cuda_device_real.sh's add leaves them: SmolLM2 (98,362,432 bytes) then gemma, checked by sha256.
cat "$PARTS"/part* > /root/both.gguf || { echo "no model parts: run cuda_device_real.sh add first"; exit 1; }
head -c 98362432 /root/both.gguf > "$MODELS/smollm2.gguf"
# Gemma only when every part came (p1 holds its first bytes too).
[ "$(stat -c %s /root/both.gguf)" = $((98362432 + 253113024)) ] && tail -c +98362433 /root/both.gguf > "$MODELS/gemma.gguf"
rm /root/both.gguf
sums="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  smollm2.gguf"
[ -f "$MODELS/gemma.gguf" ] && sums="$sums
a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma.gguf"
echo "$sums" | (cd "$MODELS" && sha256sum -c) || { echo "model checksum FAILED"; rm -f "$MODELS"/*.gguf; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cd "$HERE"  # eval's --haystack default is data/kjv.txt
rc=0
for spec in "$@"; do
  IFS=: read -r name lengths ratios <<<"$spec"
  [ -f "$MODELS/$name.gguf" ] || { echo "$name: not brought (add its parts)"; rc=1; continue; }
  args=(-m "$MODELS/$name.gguf" -o "$OUT/$name" --longctx "$HERE/bin/longctx" --device cuda --lengths "$lengths"
        --ratios "${ratios:-8,20}" --depths "${DEPTHS:-0.1,0.3,0.5,0.7,0.9}" --seeds "${SEEDS:-1}"
        --modes "${MODES:-inside}" --tasks "${TASKS:-needle,multikey}" --threads 8)
  [ -n "${METHODS:-}" ] && args+=(--methods "$METHODS")
  echo "== $name $lengths"
  time python3 quality_table.py "${args[@]}" || rc=1
done
exit $rc
