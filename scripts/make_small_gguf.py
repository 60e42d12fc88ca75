#!/usr/bin/env python3
"""Writes a GGUF with the first N transformer blocks of another: the same architecture, metadata (tokenizer
included), tensor formats and bytes, with `<arch>.block_count` set to N. The GPU end-to-end check
(scripts/cuda_device_backend.sh) compares the CUDA backend with the CPU backend on the same file; the full SmolLM2
file (98 MB) exceeds what one device call carries (64 MiB), its first 8 blocks plus the Q8_0 embedding do not.

    python3 scripts/make_small_gguf.py IN.gguf OUT.gguf N_LAYERS      (needs the gguf package: pip install gguf)
"""
import re
import sys

import gguf
import numpy as np


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, n_layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    kept = 0
    for t in r.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_layers:
            continue
        # The raw bytes in the file's format: the reader's array (uint8 rows for a quantized format) gives the shape.
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        kept += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{dst}: {arch}, {n_layers} of {n_total} blocks, {kept} tensors")


if __name__ == "__main__":
    main()
