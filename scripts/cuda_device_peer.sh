#!/usr/bin/env bash
# longctx against llama.cpp's CUDA backend (llama-bench) on the GPU machine, on the same GGUF files: Llama-3-8B-shape
# files with random weights (scripts/make_synthetic_gguf.py, written there: 16 GB in BF16 cannot be carried) in BF16,
# Q8_0 and Q4_K_M (the last two made from the BF16 file by llama.cpp's llama-quantize).
#
# llama.cpp comes from the sources inside the PyPI llama-cpp-python==0.3.36 source distribution, trimmed here to what
# llama-bench and llama-quantize need (2.4 MB as .tar.xz) and built THERE for sm_90 on its 16 cores:
#
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36; tar xzf llama_cpp_python-0.3.36.tar.gz
#   scripts/cuda_device_peer.sh --trim SDIST_DIR/vendor/llama.cpp TAR     (TAR: the trimmed tree as .tar.xz)
#   scripts/cuda_device_peer.sh --stage DIR TAR                           (DIR: bin/longctx, lib/, TAR, these scripts)
#   run command="DIR/cuda_device_peer.sh build make"  carry=[DIR]   (then "DIR/cuda_device_peer.sh bf16 q8_0 q4_k_m"
#                                                                     while the machine is warm: /root/peer stays)
#
# Sections: build (llama-bench and llama-quantize, CUDA, sm_90), make (write the BF16 file, quantize it to Q8_0 and
# Q4_K_M), then any of bf16, q8_0, q4_k_m: llama-bench and `longctx bench --device cuda` on that file, one after the
# other, each at depths 0 and 32768: pp512 and tg128 with prompts in chunks of 512 on both sides (llama-bench's
# default micro-batch, longctx -b 512), and pp4096. Flash attention on for llama.cpp, f16 KV on both.
# small: the same two on the real SmolLM2 and Gemma 3 files (brought by scripts/cuda_device_real.sh) at depths 0
# and 4096. Logs and a summary go to $OUT (or DIR/out).
set -uo pipefail
if [ "${1:-}" = "--trim" ]; then
  src="$2" tar="$(realpath "$3")" tmp="$(mktemp -d)"
  mkdir -p "$tmp/ll/tools" "$tmp/ll/ggml/src"
  cp -r "$src"/{CMakeLists.txt,cmake,include,src,common,vendor,gguf-py,LICENSE} "$tmp/ll/"
  cp -r "$src"/tools/{llama-bench,quantize} "$tmp/ll/tools/"
  cp -r "$src"/ggml/{CMakeLists.txt,cmake,include} "$tmp/ll/ggml/"
  cp -r "$src"/ggml/src/{CMakeLists.txt,*.c,*.cpp,*.h,*.in,ggml-cpu,ggml-cuda} "$tmp/ll/ggml/src/"
  printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(llama-bench)\nadd_subdirectory(quantize)\n' \
    > "$tmp/ll/tools/CMakeLists.txt"
  tar -C "$tmp" -cJf "$tar" ll && rm -rf "$tmp" && ls -la "$tar"
  exit 0
fi
if [ "${1:-}" = "--stage" ]; then
  D="$2" tar="$3" repo="$(cd "$(dirname "$0")/.." && pwd)"
  mkdir -p "$D/bin" "$D/lib"
  cp "$repo/build/cuda/longctx" "$D/bin/" && strip "$D/bin/longctx"
  for l in libhwy.so.1 libfmt.so.9 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$D/lib/"
  done
  cp "$tar" "$D/llama.cpp.tar.xz"
  cp "$0" "$repo/scripts/make_synthetic_gguf.py" "$D/"
  du -sh "$D"
  exit 0
fi

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT" /root/peer
export LD_LIBRARY_PATH="$HERE/lib:${LD_LIBRARY_PATH:-}"
M=/root/peer/llama3-8b
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$OUT/summary.txt"
for s in "$@"; do
  case "$s" in
    build)
      t0=$(date +%s)
      # A call cut short resumes where it stopped: the sources are unpacked and configured once.
      [ -d /root/peer/ll ] || tar -C /root/peer -xJf "$HERE/llama.cpp.tar.xz"
      [ -f /root/peer/build/build.ninja ] ||
        cmake -S /root/peer/ll -B /root/peer/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
          -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
          -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
          > "$OUT/llama_build.txt" 2>&1 || { tail -30 "$OUT/llama_build.txt"; exit 1; }
      cmake --build /root/peer/build -j 16 --target llama-bench llama-quantize >> "$OUT/llama_build.txt" 2>&1 ||
        { tail -30 "$OUT/llama_build.txt"; exit 1; }
      echo "build: $(($(date +%s) - t0)) s" | tee -a "$OUT/summary.txt"
      ;;
    make)
      t0=$(date +%s)
      # Each file under a temporary name until whole: a call cut short leaves nothing that looks done.
      [ -e "$M-bf16.gguf" ] || { PYTHONPATH=/root/peer/ll/gguf-py python3 "$HERE/make_synthetic_gguf.py" "$M.tmp" \
        --type bf16 && mv "$M.tmp" "$M-bf16.gguf"; }
      for q in q8_0 q4_k_m; do
        [ -e "$M-$q.gguf" ] || { /root/peer/build/bin/llama-quantize "$M-bf16.gguf" "$M.tmp" "${q^^}" 16 \
          > "$OUT/quantize_$q.txt" 2>&1 && mv "$M.tmp" "$M-$q.gguf"; }
      done
      ls -la /root/peer | tee -a "$OUT/summary.txt"
      echo "make: $(($(date +%s) - t0)) s" | tee -a "$OUT/summary.txt"
      ;;
    bf16|q8_0|q4_k_m)
      f="$M-$s.gguf"
      [ -e "$f" ] || { echo "$f missing: run the make section first"; exit 1; }
      echo "== $s: llama.cpp" | tee -a "$OUT/summary.txt"
      timeout 280 /root/peer/build/bin/llama-bench -m "$f" -ngl 99 -fa on -ctk f16 -ctv f16 -b 512 -ub 512 -p 512,4096 -n 128 \
        -d 0,32768 -r 3 -o md 2>"$OUT/llama_bench_$s.err" | tee -a "$OUT/summary.txt"
      echo "== $s: longctx" | tee -a "$OUT/summary.txt"
      timeout 150 "$HERE/bin/longctx" bench -m "$f" --device cuda -p 512 -n 128 -d 0,32768 -r 3 -b 512 2>&1 |
        tee "$OUT/longctx_$s.txt" | grep -E "^\|" | tee -a "$OUT/summary.txt"
      timeout 60 "$HERE/bin/longctx" bench -m "$f" --device cuda -p 4096 -n 0 -d 0,32768 -r 3 -b 512 2>&1 |
        tee "$OUT/longctx_${s}_pp4096.txt" | grep -E "^\|" | tee -a "$OUT/summary.txt"
      ;;
    small)  # the real SmolLM2 and Gemma 3 files, where scripts/cuda_device_real.sh has reassembled them
      for f in /root/longctx-models/*.gguf; do
        [ -e "$f" ] || { echo "no real models in /root/longctx-models: run cuda_device_real.sh's check first"; exit 1; }
        n="$(basename "$f" .gguf)"
        echo "== $n: llama.cpp" | tee -a "$OUT/summary.txt"
        timeout 120 /root/peer/build/bin/llama-bench -m "$f" -ngl 99 -fa on -ctk f16 -ctv f16 -b 512 -ub 512 \
          -p 512,4096 -n 128 -d 0,4096 -r 3 -o md 2>"$OUT/llama_bench_$n.err" | tee -a "$OUT/summary.txt"
        echo "== $n: longctx" | tee -a "$OUT/summary.txt"
        timeout 90 "$HERE/bin/longctx" bench -m "$f" --device cuda -p 512 -n 128 -d 0,4096 -r 3 -b 512 2>&1 |
          tee "$OUT/longctx_$n.txt" | grep -E "^\|" | tee -a "$OUT/summary.txt"
        timeout 60 "$HERE/bin/longctx" bench -m "$f" --device cuda -p 4096 -n 0 -d 0,4096 -r 3 -b 512 2>&1 |
          tee "$OUT/longctx_${n}_pp4096.txt" | grep -E "^\|" | tee -a "$OUT/summary.txt"
      done
      ;;
    *) echo "unknown section $s"; exit 2 ;;
  esac
done
