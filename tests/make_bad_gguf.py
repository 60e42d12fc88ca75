#!/usr/bin/env python3
"""Writes small malformed GGUF files for the CLI's bad-input tests, with the standard library only.

usage: make_bad_gguf.py OUT_DIR
  unknown_arch.gguf  a well-formed GGUF whose architecture is 'mamba9'
  past_end.gguf      a well-formed header whose only tensor claims bytes past the end of the file
"""
import struct
import sys
from pathlib import Path


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv_string(key: str, value: str) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)


def kv_u32(key: str, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<I", 4) + struct.pack("<I", value)


def gguf(kvs, tensors, data: bytes) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    for name, shape, ggml_type, offset in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<q", d) for d in shape)
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * ((-len(out)) % 32)
    return out + data


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "unknown_arch.gguf").write_bytes(
        gguf([kv_string("general.architecture", "mamba9"), kv_u32("mamba9.block_count", 1)],
             [("token_embd.weight", [4, 4], 0, 0)], b"\0" * 64))
    # An F32 tensor of 1024 x 1024 values (4 MiB) in a file of a few hundred bytes.
    (out / "past_end.gguf").write_bytes(
        gguf([kv_string("general.architecture", "llama")], [("token_embd.weight", [1024, 1024], 0, 0)], b"\0" * 64))


if __name__ == "__main__":
    main()
