#!/usr/bin/env python3
"""Writes a llama-architecture GGUF of a given shape with random weights, for speed comparisons where no real file of
that shape can be carried (the GPU peer benchmark, scripts/cuda_device_peer.sh: a Llama-3-8B-shape file is 16 GB in
BF16). Both engines read the same file; the weights' values do not matter for speed, only their format and size.

    python3 scripts/make_synthetic_gguf.py OUT.gguf [--shape llama3-8b] [--layers N] [--vocab V] [--type bf16|f16|f32|q8_0]

Matrices are N(0, 0.02) values in the chosen format (BF16 from the f32 bits rounded to nearest even; Q8_0 through
gguf.quants); norms are 1.0 in f32, as converted models keep them. Other formats (Q4_K, Q6_K, ...) come from this BF16
file through llama.cpp's llama-quantize. The tokenizer is a SentencePiece-style vocabulary (<unk>, <s>, </s>, the
256 byte tokens, then placeholder pieces) with no meaning: benchmarks feed token ids, never text. One pool of random
values is drawn once and each tensor reads it from its own offset, so writing 8 billion weights takes disk time, not
random-number time.
"""
import argparse

import gguf
import numpy as np

SHAPES = {
    # Llama-3.1-8B: 32 blocks, 4096 wide, 32 query heads over 8 kv-heads of 128, SwiGLU 14336, vocab 128256.
    "llama3-8b": dict(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, n_vocab=128256,
                      rope_theta=500000.0, n_ctx=131072, eps=1e-5),
    # A small one of the same kind, for checking the file here.
    "tiny": dict(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_vocab=1024, rope_theta=10000.0,
                 n_ctx=4096, eps=1e-5),
}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--layers", type=int, help="blocks (default: the shape's)")
    ap.add_argument("--vocab", type=int, help="vocabulary size (default: the shape's)")
    ap.add_argument("--type", choices=["bf16", "f16", "f32", "q8_0"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape])
    if a.layers is not None:
        s["n_layer"] = a.layers
    if a.vocab is not None:
        s["n_vocab"] = a.vocab
    if s["n_layer"] < 1 or s["n_vocab"] < 259:
        ap.error("need at least 1 layer and a vocabulary of 259 (3 specials + 256 bytes)")
    head_dim = s["n_embd"] // s["n_head"]

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"synthetic {a.shape} {a.type}")
    w.add_block_count(s["n_layer"])
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_vocab_size(s["n_vocab"])
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[a.type]
    w.add_file_type(file_type)

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(s["n_vocab"] - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (s["n_vocab"] - len(types))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(s["n_vocab"])])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    rng = np.random.default_rng(a.seed)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(np.float32)
    offset = [0]

    def matrix(rows: int, cols: int) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
        n = rows * cols
        start = offset[0] % (pool.size - 1)
        offset[0] += 7919 * 64
        reps = -(-(start + n) // pool.size)
        x = np.tile(pool, reps)[start:start + n].reshape(rows, cols) if reps > 1 else \
            pool[start:start + n].reshape(rows, cols)
        if a.type == "f32":
            return np.ascontiguousarray(x), None
        if a.type == "f16":
            return x.astype(np.float16), None
        if a.type == "bf16":
            return bf16_bits(x), gguf.GGMLQuantizationType.BF16
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0

    def add(name: str, rows: int, cols: int) -> None:
        data, raw = matrix(rows, cols)
        w.add_tensor(name, data, raw_dtype=raw)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    d, f, kv = s["n_embd"], s["n_ff"], s["n_head_kv"] * head_dim
    add("token_embd.weight", s["n_vocab"], d)
    for i in range(s["n_layer"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(d))
        add(f"blk.{i}.attn_q.weight", d, d)
        add(f"blk.{i}.attn_k.weight", kv, d)
        add(f"blk.{i}.attn_v.weight", kv, d)
        add(f"blk.{i}.attn_output.weight", d, d)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(d))
        add(f"blk.{i}.ffn_gate.weight", f, d)
        add(f"blk.{i}.ffn_up.weight", f, d)
        add(f"blk.{i}.ffn_down.weight", d, f)
    w.add_tensor("output_norm.weight", ones(d))
    add("output.weight", s["n_vocab"], d)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


if __name__ == "__main__":
    main()
