#!/usr/bin/env python3
"""Writes a GGUF with the first N transformer blocks of another: the same architecture, metadata, tensor formats
and bytes, with `<arch>.block_count` set to N; with --vocab V also only the first V rows of the embedding (and of
the output matrix, when the file has its own) and of the tokenizer's per-token arrays, merges dropped: the model then
takes token ids below V, fed as ids (the cut vocabulary tokenizes text poorly or not at all). The GPU end-to-end check (scripts/cuda_device_backend.sh)
compares the CUDA backend with the CPU backend on the same file; the real files (SmolLM2 98 MB, gemma-3-270m 241 MB)
exceed what one device call carries (64 MiB).

    python3 scripts/make_small_gguf.py IN.gguf OUT.gguf N_LAYERS [--vocab V]    (needs the gguf package)
"""
import re
import sys

import gguf
import numpy as np


def main() -> None:
    args = sys.argv[1:]
    vocab = 0
    if len(args) == 5 and args[3] == "--vocab":
        vocab = int(args[4])
        args = args[:3]
    if len(args) != 3:
        sys.exit(__doc__)
    src, dst, n_layers = args[0], args[1], int(args[2])
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    n_total = int(r.fields[f"{arch}.block_count"].contents())
    if not 1 <= n_layers <= n_total:
        sys.exit(f"N_LAYERS must be in 1..{n_total}")
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the header's own fields; the writer writes the architecture itself
        if name == f"{arch}.block_count":
            w.add_uint32(name, n_layers)
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = f.contents()
        if vocab and name == "tokenizer.ggml.merges":
            continue
        if vocab and name.startswith("tokenizer.ggml.") and vtype == gguf.GGUFValueType.ARRAY and len(value) > vocab:
            value = value[:vocab]
        w.add_key_value(name, value, vtype, sub_type=sub)
    kept = 0
    for t in r.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_layers:
            continue
        # The raw bytes in the file's format: the reader's array (uint8 rows for a quantized format) gives the shape.
        data = np.asarray(t.data)
        if vocab and t.name in ("token_embd.weight", "output.weight"):
            if vocab > data.shape[0]:
                sys.exit(f"--vocab {vocab} exceeds the {data.shape[0]} rows of {t.name}")
            data = np.ascontiguousarray(data[:vocab])
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        kept += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{dst}: {arch}, {n_layers} of {n_total} blocks, {kept} tensors" + (f", vocab {vocab}" if vocab else ""))


if __name__ == "__main__":
    main()
