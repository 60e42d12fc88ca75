#!/usr/bin/env bash
# The main job on the default model: a question answered over a long document, then what it cost.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh release
exec build/release/longctx run -m "${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --file data/1samuel-1-7.txt -p "Question: in the text above, who is the mother of Samuel? Answer in one sentence." \
  --chat --temp 0 -n 48 --kv full "$@"
