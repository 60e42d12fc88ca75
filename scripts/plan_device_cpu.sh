#!/usr/bin/env bash
# Measures the plan's CPU golden (scripts/plan_golden_cpu.py) on a device machine's host CPU, which is quiet where
# the development machine is shared: the models travel in parts (the device tool carries 64 MiB a call), this
# checks them against setup.sh's sha256, and runs the golden in the background so that it outlives one call.
# Usage there: scripts/plan_device_cpu.sh PARTS_DIR BIN_DIR [golden args...]; the golden lands in
# /root/plan_golden/cpu_measured.json and its log beside it.
set -euo pipefail
parts="$1" bin="$2"; shift 2
models=/root/.cache/longctx
mkdir -p "$models" /root/plan_golden
cat "$parts"/part0* > /root/both.gguf
head -c 98362432 /root/both.gguf > "$models/SmolLM2-135M-Instruct.Q4_1.gguf"
tail -c +98362433 /root/both.gguf > "$models/gemma-3-270m-q4_k_m.gguf"
rm /root/both.gguf
(cd "$models" && sha256sum -c --quiet) <<SUMS
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf
a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m-q4_k_m.gguf
SUMS
mkdir -p build/plan && cp "$bin"/longctx build/plan/ && export LD_LIBRARY_PATH="$(cd "$bin" && pwd)"
setsid nohup python3 -u scripts/plan_golden_cpu.py --build build/plan --out /root/plan_golden/cpu_measured.json "$@" \
  > /root/plan_golden/log 2>&1 < /dev/null &
echo "plan golden started (pid $!)"
