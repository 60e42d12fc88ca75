#!/usr/bin/env python3
"""Golden vectors for the GGUF weight formats: block bytes and their dequantization by PyPI `gguf`.

For each format this writes tests/golden/quant/<NAME>.bin:

    char[4] "LCQG", then u32 little-endian: version (1), ggml type id, n_blocks, block_values, block_bytes, n_real
    n_blocks * block_bytes bytes      the blocks, as they lie in a GGUF row
    n_blocks * block_values f32       gguf.quants.dequantize of those bytes

The first n_blocks - n_real blocks are random bytes whose f16 scale fields are overwritten with finite values
(including zero, negative and subnormal halves: random bytes would give NaN and inf scales, which say nothing about
the layout); the last n_real are copied from the real models of DESIGN.md when they are present (~/.cache/longctx,
or LONGCTX_MODEL_DIR), so the goldens also cover what the quantizers of llama.cpp actually write.

Rerun after changing the set of formats: `python3 scripts/gen_quant_goldens.py`. Deterministic for a given
gguf package and model files. Needs numpy and gguf (PyPI), nothing else.
"""
import os
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "quant"
MODEL_DIR = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache" / "longctx"))
MODELS = [MODEL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf", MODEL_DIR / "gemma-3-270m-q4_k_m.gguf"]

# Byte offsets of the f16 scale fields inside one block (d, and m / dmin where the format has one).
SCALE_OFFSETS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}
FORMATS = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
REAL_FORMATS = {QT.Q4_1, QT.Q8_0, QT.Q5_0, QT.Q4_K, QT.Q6_K}
N_RANDOM_BLOCKS = 12  # per block format; F32/F16/BF16 get 256 single-value "blocks"
N_REAL_BLOCKS = 8


def sane_halves(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 scales: mostly ordinary magnitudes, plus the edge cases a quantizer can write."""
    mag = np.exp(rng.uniform(np.log(1e-5), np.log(2.0), n)).astype(np.float32)
    sign = np.where(rng.random(n) < 0.3, -1.0, 1.0).astype(np.float32)
    h = (mag * sign).astype(np.float16)
    edge = np.array([0.0, -0.0, 6.0e-8, -3.0e-6, 65504.0], dtype=np.float16)  # zero, subnormals, largest half
    k = min(n // 3, len(edge))
    pos = rng.choice(n, size=k, replace=False)
    h[pos] = edge[:k]
    return h


def random_blocks(qt: QT, rng: np.random.Generator) -> np.ndarray:
    block_values, block_bytes = GGML_QUANT_SIZES[qt]
    if qt == QT.F32:  # any finite float: the exponent field must not be all ones
        u = rng.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32)
        u = np.where((u & 0x7F800000) == 0x7F800000, u & 0xBFFFFFFF, u)
        return u.view(np.uint8).reshape(256, 4)
    if qt in (QT.F16, QT.BF16):
        u = rng.integers(0, 2**16, 256, dtype=np.uint32).astype(np.uint16)
        exp_mask = 0x7C00 if qt == QT.F16 else 0x7F80
        u = np.where((u & exp_mask) == exp_mask, u & ~np.uint16(0x4000), u).astype(np.uint16)
        return u.view(np.uint8).reshape(256, 2)
    blocks = rng.integers(0, 256, (N_RANDOM_BLOCKS, block_bytes), dtype=np.uint16).astype(np.uint8)
    for off in SCALE_OFFSETS[qt]:
        blocks[:, off:off + 2] = sane_halves(rng, N_RANDOM_BLOCKS).view(np.uint8).reshape(-1, 2)
    return blocks


def real_blocks(qt: QT, rng: np.random.Generator) -> np.ndarray:
    """Blocks at random places of every tensor of this format in the models, N_REAL_BLOCKS in all."""
    _, block_bytes = GGML_QUANT_SIZES[qt]
    pool = []
    for path in MODELS:
        if not path.exists():
            continue
        for t in GGUFReader(path).tensors:
            if t.tensor_type == qt:
                pool.append(np.asarray(t.data).reshape(-1, block_bytes))
    if not pool:
        return np.zeros((0, block_bytes), dtype=np.uint8)
    out = []
    for i in range(N_REAL_BLOCKS):
        data = pool[rng.integers(len(pool))] if i >= len(pool) else pool[i * len(pool) // N_REAL_BLOCKS]
        out.append(data[rng.integers(data.shape[0])])
    return np.stack(out)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)
    missing = [str(p) for p in MODELS if not p.exists()]
    if missing:
        print("note: no real blocks from missing models:", ", ".join(missing), file=sys.stderr)
    total = 0
    for qt in FORMATS:
        block_values, block_bytes = GGML_QUANT_SIZES[qt]
        blocks = random_blocks(qt, rng)
        n_real = 0
        if qt in REAL_FORMATS:
            real = real_blocks(qt, rng)
            n_real = real.shape[0]
            blocks = np.concatenate([blocks, real])
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        values = np.asarray(dequantize(blocks.reshape(-1), qt), dtype=np.float32).reshape(-1)
        assert values.size == blocks.shape[0] * block_values
        header = b"LCQG" + struct.pack("<6I", 1, int(qt), blocks.shape[0], block_values, block_bytes, n_real)
        payload = header + blocks.tobytes() + values.astype("<f4").tobytes()
        (OUT / f"{qt.name}.bin").write_bytes(payload)
        total += len(payload)
        print(f"{qt.name:5s} {blocks.shape[0]:4d} blocks ({n_real} real) {len(payload):7d} bytes")
    print(f"total {total} bytes in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
