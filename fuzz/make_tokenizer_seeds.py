#!/usr/bin/env python3
"""Writes the tokenizer fuzzer's seeds (fuzz/corpus/tokenizer): the hand-written texts of the tokenizer goldens
(tests/golden/tokenizer/splits.json, before its random cases) and a few inputs the goldens cannot hold (invalid
UTF-8, NUL bytes, a cut multi-byte character). Each seed is one byte of flags, as tokenizer_fuzz reads it
(bit 0: the tokenizer, bit 1: parse_special), then the text; the flags cycle so that every text starts with a
different choice. Rerunnable: usage make_tokenizer_seeds.py [OUT_DIR]
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_HAND_WRITTEN = 34  # splits.json's cases after these are random strings

EXTRA = [
    b"\xff\xfe\xc0\x80 overlong \xed\xa0\x80 surrogate \xf4\x90\x80\x80 past U+10FFFF \xe2\x96",
    b"nul\x00inside\x00\x00 and \x01\x02\x03 controls",
    b"\xe2\x96\x81\xe2\x96\x81 spm space and real  spaces \xe2\x96\x81",
    b"<|im_start|>system\n<|im_end|><start_of_turn><end_of_turn><|endoftext|><bos><eos><0x41>",
    b"0123456789" * 6 + b" \xd9\xa3\xd9\xa4 \xf0\x9d\x9f\x99",
    b"supercalifragilisticexpialidocious" * 3,
    b"I'll've ShE'S 'RE 'Ve \xc5\xbf'S",
    b"\r\n\r\n \t\x0b\x0c\xc2\x85\xe2\x80\xa8  \n",
]


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz/corpus/tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    cases = json.loads((ROOT / "tests/golden/tokenizer/splits.json").read_text())["cases"][:N_HAND_WRITTEN]
    texts = [c["text"].encode() for c in cases if c["text"]] + EXTRA
    for i, text in enumerate(texts):
        (out / f"seed_{i:02d}").write_bytes(bytes([i % 4]) + text)
    print(f"wrote {len(texts)} seeds to {out}")


if __name__ == "__main__":
    main()
