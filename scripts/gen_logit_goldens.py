#!/usr/bin/env python3
"""End-to-end logits goldens from an independent implementation: HF transformers on the same GGUF files.

transformers reads each GGUF, dequantizes every tensor to float32 (through PyPI `gguf`) and runs its own PyTorch
implementation of the architecture (LlamaForCausalLM, Gemma3ForCausalLM) in float32 on the CPU with eager
attention and an f32 KV cache. The engine computes in f32 from the same dequantized weights, so its logits should
agree closely (only summation order differs). The test needs none of this: it reads the JSON.

Writes tests/golden/logits/smollm2.json and tests/golden/logits/gemma3.json. For each fixed prompt (MODELS below):

    name, text, add_bos, input_ids (the reference tokenizer's ids, BOS included where the model adds it; the
    engine test feeds exactly these), n_tokens
    last       at the last prompt position: top-64 ids and logits, the logits at the model's 64 probe_ids
               (seeded, listed in the header), and max / mean / std / logsumexp of the full logit vector
    positions  the same summary with top-16 at positions 0, n/4, n/2, 3n/4 (0-based, floor), to check all of prefill
    greedy     32 greedy tokens (argmax, lowest id on a tie, no stop at EOS; each step continues from the f32 KV
               cache): ids, second_ids (the runner-up), top1_logits, margins (top1 - top2 logit) and min_margin;
               nocache_max_abs_diff is the largest difference between those cached-step logits and one uncached
               forward over prompt + continuation (a self-check of the reference); greedy_text decodes the ids
               for a human reader only
    numpy_f64_max_abs_diff  largest logit difference, over `positions` and the last one, between transformers and
               NumpyRef below: a from-scratch float64 numpy forward pass read straight from the GGUF tensors (the
               way the engine reads them: norm weights as stored, RoPE pair layout and bases, sliding window).
               It checks that transformers' GGUF loading is right; the script fails if it exceeds NUMPY_TOL
    crosscheck_llamacpp (only with --crosscheck) llama.cpp (f32 KV cache) at the same positions, for scale only:
               llama.cpp quantizes activations to 8 bits in its CPU matmuls, so it differs from f32 by far more
               (mean |diff| ~0.1-1) than the engine should

Rerun (from the repo root, ~3 minutes on one core):

    pip install -r scripts/requirements-goldens.txt      # torch pulls its CUDA wheels from PyPI: several GB
    apt-get install bible-kjv                             # the long prompt is a fixed KJV range, hashed below
    python3 scripts/gen_logit_goldens.py [--crosscheck] [--threads N] [--only smollm2|gemma3]

Models come from $LONGCTX_MODEL_DIR or ~/.cache/longctx (scripts/setup.sh installs them); the header records each
file's sha256, so a test can tell the goldens are for another file. Deterministic for fixed package versions.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "logits"
MODEL_DIR = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache" / "longctx"))

SCHEMA = "longctx-logits-golden/1"
TOP_LAST = 64
TOP_POS = 16
N_PROBES = 64
PROBE_SEED = 20261123
N_GREEDY = 32
NUMPY_TOL = 2e-3  # transformers f32 vs the float64 numpy forward, max |logit difference|; seen: <= 4e-4

# The long prompt: Genesis 1:1 to 2:7 as `bible` (Debian bible-kjv) prints it, each line stripped, blank lines
# dropped, joined with "\n" (chapter headings and verse numbers kept). ~1,250 tokens in both tokenizers, which for
# gemma3 is past its 512-token sliding window.
KJV_RANGE = "gen1:1-gen2:7"
KJV_SHA256 = "ccb8a4782babefd628dde4c4e0041ab156037d7db9222b14ab9fae8b12d8d217"

SENTENCE = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were"
QUESTION = "Question: Why is the sky blue during the day but red at sunset?\nAnswer:"
CODE = (
    "def fibonacci(n: int) -> int:\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    if n < 2:\n"
    "        return n\n"
    "    a, b = 0, 1\n"
    "    for _ in range(n - 1):\n"
)
MIXED = "In 1969, Apollo 11 landed at 20:17 UTC; café, naïve, Ærø, 東京, Москва, 😀 — π ≈ 3.14159,   three spaces."

MODELS = {
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "arch": "llama",
        "prompts": [
            ("sentence", SENTENCE),
            ("question", QUESTION),
            ("code", CODE),
            ("chat", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
            ("mixed", MIXED),
            ("kjv_long", None),
        ],
    },
    "gemma3": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "arch": "gemma3",
        "prompts": [
            ("sentence", SENTENCE),
            ("question", QUESTION),
            ("code", CODE),
            ("chat", "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"),
            ("mixed", MIXED),
            ("kjv_long", None),
        ],
    },
}


def kjv_text():
    try:
        out = subprocess.run(["bible", "-l10000", KJV_RANGE], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("`bible` not found: apt-get install bible-kjv")
    text = "\n".join(line.strip() for line in out.splitlines() if line.strip())
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != KJV_SHA256:
        sys.exit(f"KJV text for {KJV_RANGE} has sha256 {digest}, expected {KJV_SHA256}: another bible-kjv version?")
    return text


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x):
    """A float32 value as the shortest decimal that reads back to the same float32."""
    return float(str(np.float32(x)))


def f64(x):
    return float(f"{float(x):.10g}")


def summary(row, k):
    """row: float32 numpy vector of one position's logits."""
    order = np.argsort(-row, kind="stable")[:k]  # ties: lowest id first
    r64 = row.astype(np.float64)
    mx = r64.max()
    return {
        "top_ids": [int(i) for i in order],
        "top_logits": [f32(row[i]) for i in order],
        "max": f32(row.max()),
        "mean": f64(r64.mean()),
        "std": f64(r64.std()),
        "logsumexp": f64(mx + math.log(np.exp(r64 - mx).sum())),
    }


def pkg_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load(file, threads):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=file, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return tok, model


def check_config(name, cfg):
    """The config values the engine must also use; fails loudly where the GGUF converter got one wrong."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if name == "gemma3":
        want_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
        checks = {
            "num_hidden_layers": (cfg.num_hidden_layers, 18),
            "hidden_size": (cfg.hidden_size, 640),
            "head_dim": (cfg.head_dim, 256),
            "num_attention_heads": (cfg.num_attention_heads, 4),
            "num_key_value_heads": (cfg.num_key_value_heads, 1),
            "sliding_window": (cfg.sliding_window, 512),
            "layer_types": (list(cfg.layer_types), want_types),
            "rope_theta_global": (rope["full_attention"]["rope_theta"], 1e6),
            "rope_theta_local": (rope["sliding_attention"]["rope_theta"], 1e4),
            "rope_type": ({rope[k]["rope_type"] for k in rope}, {"default"}),
            "query_pre_attn_scalar": (cfg.query_pre_attn_scalar, 256),
            "hidden_activation": (cfg.hidden_activation, "gelu_pytorch_tanh"),
            "attn_logit_softcapping": (cfg.attn_logit_softcapping, None),
            "final_logit_softcapping": (cfg.final_logit_softcapping, None),
            "tie_word_embeddings": (cfg.tie_word_embeddings, True),
            "vocab_size": (cfg.vocab_size, 262144),
        }
        if getattr(cfg, "use_bidirectional_attention", False):
            sys.exit("gemma3 config has use_bidirectional_attention set")
    else:
        checks = {
            "num_hidden_layers": (cfg.num_hidden_layers, 30),
            "hidden_size": (cfg.hidden_size, 576),
            "head_dim": (cfg.head_dim, 64),
            "num_attention_heads": (cfg.num_attention_heads, 9),
            "num_key_value_heads": (cfg.num_key_value_heads, 3),
            "rope_theta": (rope["rope_theta"], 1e5),
            "rope_type": (rope["rope_type"], "default"),
            "hidden_act": (cfg.hidden_act, "silu"),
            "tie_word_embeddings": (cfg.tie_word_embeddings, True),
            "vocab_size": (cfg.vocab_size, 49152),
        }
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad:
        sys.exit(f"{name}: config differs from the model's: {bad}")
    out = {k: (sorted(v[0]) if isinstance(v[0], set) else v[0]) for k, v in checks.items()}
    out["rms_norm_eps"] = cfg.rms_norm_eps
    if name == "gemma3":
        out["embed_scale"] = "sqrt(hidden_size), in f32"
        out["sliding_mask"] = "query i sees key j iff i-512 < j <= i (512 keys including itself)"
        out["attn_scale"] = "query_pre_attn_scalar**-0.5"
        out["norm_weights"] = "GGUF holds 1+w; transformers subtracts 1 and its RMSNorm multiplies by (1+w)"
    return out


def run_prompt(model, ids, n_gen):
    import torch

    n = len(ids)
    positions = sorted({0, n // 4, n // 2, (3 * n) // 4} - {n - 1})
    keep = positions + [n - 1]
    with torch.no_grad():
        x = torch.tensor([ids])
        out = model(input_ids=x, use_cache=True, logits_to_keep=torch.tensor(keep))
        rows = out.logits[0].float().numpy()
        past = out.past_key_values
        pos_rows = {p: rows[i] for i, p in enumerate(keep)}
        last = pos_rows[n - 1].copy()
        gen, second, top1, margins, step_rows = [], [], [], [], []
        cur = last
        for step in range(n_gen):
            order = np.argsort(-cur, kind="stable")[:2]
            gen.append(int(order[0]))
            second.append(int(order[1]))
            top1.append(cur[order[0]])
            margins.append(float(cur[order[0]]) - float(cur[order[1]]))
            step_rows.append(cur)
            if step + 1 == n_gen:
                break
            out = model(input_ids=torch.tensor([[gen[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            cur = out.logits[0, -1].float().numpy().copy()
        # Self-check: one uncached forward over prompt + continuation must give the same step logits.
        full = torch.tensor([ids + gen[:-1]])
        idx = torch.arange(n - 1, n - 1 + n_gen)
        ref = model(input_ids=full, use_cache=False, logits_to_keep=idx).logits[0].float().numpy()
        nocache_diff = float(np.abs(ref - np.stack(step_rows)).max())
        if not all(int(np.argmax(ref[i])) == gen[i] for i in range(n_gen) if margins[i] > 1e-3):
            sys.exit("greedy ids differ between cached and uncached forward")
    return pos_rows, positions, last, {
        "n": n_gen,
        "ids": gen,
        "second_ids": second,
        "top1_logits": [f32(v) for v in top1],
        "margins": [f64(np.float32(m)) for m in margins],
        "min_margin": f64(min(margins)),
        "nocache_max_abs_diff": f64(nocache_diff),
    }


class NumpyRef:
    """A from-scratch float64 forward pass straight from the GGUF tensors (numpy only, no transformers): a check that
    transformers reads the GGUF the way the engine must (norm weights, RoPE layout and bases, sliding window)."""

    def __init__(self, path, arch):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        r = GGUFReader(str(path))
        self.arch = arch
        self.w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
        f = {k: v.contents() for k, v in r.fields.items() if k.startswith(arch + ".")}
        self.n_layer = f[arch + ".block_count"]
        self.n_head = f[arch + ".attention.head_count"]
        self.n_kv = f[arch + ".attention.head_count_kv"]
        self.eps = f[arch + ".attention.layer_norm_rms_epsilon"]
        self.base = f[arch + ".rope.freq_base"]
        self.hd = f.get(arch + ".attention.key_length", f[arch + ".embedding_length"] // self.n_head)
        self.swa = f.get(arch + ".attention.sliding_window")

    def norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, base):  # x: (n, heads, hd)
        hd = x.shape[-1]
        inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.arch == "gemma3":  # NEOX: pairs (i, i + hd/2)
            a, b = x[..., : hd // 2], x[..., hd // 2 :]
            return np.concatenate([a * c - b * s, a * s + b * c], -1)
        a, b = x[..., 0::2], x[..., 1::2]  # llama in GGUF: adjacent pairs (the converter permuted Q and K)
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out

    def logits(self, ids, keep):
        W, g = self.w, self.arch == "gemma3"
        n = len(ids)
        pos = np.arange(n, dtype=np.float64)
        x = W["token_embd.weight"][ids]
        if g:
            x = x * math.sqrt(x.shape[1])
        i_, j_ = np.arange(n)[:, None], np.arange(n)[None, :]
        for L in range(self.n_layer):
            p = f"blk.{L}."
            sliding = g and (L + 1) % 6 != 0
            h = self.norm(x, W[p + "attn_norm.weight"])
            q = (h @ W[p + "attn_q.weight"].T).reshape(n, self.n_head, self.hd)
            k = (h @ W[p + "attn_k.weight"].T).reshape(n, self.n_kv, self.hd)
            v = (h @ W[p + "attn_v.weight"].T).reshape(n, self.n_kv, self.hd)
            if g:
                q, k = self.norm(q, W[p + "attn_q_norm.weight"]), self.norm(k, W[p + "attn_k_norm.weight"])
            base = 10000.0 if sliding else self.base
            q, k = self.rope(q, pos, base), self.rope(k, pos, base)
            mask = j_ <= i_
            if sliding:
                mask &= i_ - j_ < self.swa
            rep = self.n_head // self.n_kv
            o = np.empty((n, self.n_head, self.hd))
            for hh in range(self.n_head):
                sc = q[:, hh] @ k[:, hh // rep].T / math.sqrt(self.hd)
                sc = np.where(mask, sc, -np.inf)
                sc = np.exp(sc - sc.max(-1, keepdims=True))
                o[:, hh] = (sc / sc.sum(-1, keepdims=True)) @ v[:, hh // rep]
            o = o.reshape(n, -1) @ W[p + "attn_output.weight"].T
            x = x + (self.norm(o, W[p + "post_attention_norm.weight"]) if g else o)
            h = self.norm(x, W[p + "ffn_norm.weight"])
            a, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
            if g:
                act = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
            else:
                act = a / (1 + np.exp(-a))
            f = (act * u) @ W[p + "ffn_down.weight"].T
            x = x + (self.norm(f, W[p + "post_ffw_norm.weight"]) if g else f)
        h = self.norm(x[keep], W["output_norm.weight"])
        return h @ W.get("output.weight", W["token_embd.weight"]).T


def crosscheck(path, prompts_ids, keep_by_prompt, rows_by_prompt, threads):
    from llama_cpp import Llama

    n_ctx = max(len(i) for i in prompts_ids) + 16
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=threads, type_k=0, type_v=0, verbose=False)  # type 0: f32 KV cache
    res = []
    for ids, keep, rows in zip(prompts_ids, keep_by_prompt, rows_by_prompt):
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        diffs = [float(np.abs(scores[p] - rows[p]).max()) for p in keep]
        means = [float(np.abs(scores[p] - rows[p]).mean()) for p in keep]
        agree = [int(np.argmax(scores[p])) == int(np.argmax(rows[p])) for p in keep]
        res.append({
            "version": pkg_version("llama_cpp_python"),
            "positions": keep,
            "max_abs_diff": [f64(d) for d in diffs],
            "mean_abs_diff": [f64(d) for d in means],
            "top1_agrees": agree,
        })
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(MODELS), action="append")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crosscheck", action="store_true", help="also compare with llama.cpp (llama-cpp-python)")
    ap.add_argument("--no-numpy-check", action="store_true", help="skip the float64 numpy forward pass check")
    args = ap.parse_args()

    import torch
    import transformers

    kjv = kjv_text()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(MODELS):
        spec = MODELS[name]
        path = MODEL_DIR / spec["file"]
        if not path.exists():
            sys.exit(f"{path} is missing: run scripts/setup.sh")
        print(f"[{name}] loading {path}", file=sys.stderr)
        tok, model = load(spec["file"], args.threads)
        cfg = model.config
        config = check_config(name, cfg)
        vocab = cfg.vocab_size
        probe_ids = sorted(int(i) for i in np.random.default_rng(PROBE_SEED).choice(vocab, N_PROBES, replace=False))
        add_bos = bool(getattr(tok, "add_bos_token", False))
        npref = None if args.no_numpy_check else NumpyRef(path, spec["arch"])
        bos = tok.bos_token_id

        prompts, all_ids, all_keep, all_rows = [], [], [], []
        for pname, text in spec["prompts"]:
            text = kjv if text is None else text
            ids = [int(i) for i in tok(text).input_ids]
            bare = [int(i) for i in tok(text, add_special_tokens=False).input_ids]
            if ids != ([bos] if add_bos else []) + bare:
                sys.exit(f"{name}/{pname}: BOS handling differs from add_bos={add_bos}")
            print(f"[{name}] {pname}: {len(ids)} tokens", file=sys.stderr)
            pos_rows, positions, last, greedy = run_prompt(model, ids, N_GREEDY)
            rec = {
                "name": pname,
                "text": text,
                "add_bos": add_bos,
                "n_tokens": len(ids),
                "input_ids": ids,
                "last": {"pos": len(ids) - 1, **summary(last, TOP_LAST),
                         "probe_logits": [f32(last[i]) for i in probe_ids]},
                "positions": [{"pos": p, **summary(pos_rows[p], TOP_POS)} for p in positions],
                "greedy": greedy,
                "greedy_text": tok.decode(greedy["ids"]),
            }
            if npref is not None:
                keep = positions + [len(ids) - 1]
                d = float(np.abs(npref.logits(ids, keep) - np.stack([pos_rows[p] for p in keep])).max())
                if d > NUMPY_TOL:
                    sys.exit(f"{name}/{pname}: transformers and the float64 numpy forward differ by {d}")
                rec["numpy_f64_max_abs_diff"] = f64(d)
            prompts.append(rec)
            all_ids.append(ids)
            all_keep.append(positions + [len(ids) - 1])
            all_rows.append(pos_rows)

        if args.crosscheck:
            print(f"[{name}] crosscheck with llama.cpp", file=sys.stderr)
            for rec, cc in zip(prompts, crosscheck(path, all_ids, all_keep, all_rows, args.threads)):
                rec["crosscheck_llamacpp"] = cc

        cmd = "python3 scripts/gen_logit_goldens.py" + (" --crosscheck" if args.crosscheck else "")
        doc = {
            "schema": SCHEMA,
            "model": {"name": name, "file": spec["file"], "sha256": sha256_file(path),
                      "arch": spec["arch"], "hf_model_type": cfg.model_type, "vocab_size": vocab},
            "reference": {
                "name": "transformers",
                "version": transformers.__version__,
                "torch": torch.__version__.split("+")[0],
                "gguf": pkg_version("gguf"),
                "python": platform.python_version(),
                "dtype": "float32",
                "device": "cpu",
                "attn_implementation": "eager",
                "kv_cache": "float32",
                "weights": "GGUF tensors dequantized to float32 by gguf.quants.dequantize (via transformers)",
                "tokenizer": "transformers tokenizer built from the GGUF's tokenizer.ggml.* metadata",
            },
            "config": config,
            "generated_by": cmd,
            "conventions": {
                "positions": "0-based index into input_ids; logits predict the token after that position",
                "top": "descending logit, ties broken by lower id",
                "mean_std": "over the full vocabulary, float64 accumulation, population std (ddof=0)",
                "logsumexp": "log(sum(exp(logits))) over the full vocabulary, float64",
                "greedy": "argmax (lowest id on ties), no stop at EOS, each step from the f32 KV cache; "
                          "margins[i] = top1 - top2 logit at step i; step 0 is the prompt's last position",
                "probe_ids": f"numpy default_rng({PROBE_SEED}).choice(vocab_size, {N_PROBES}, replace=False), sorted",
                "floats": "logits are float32 values written as their shortest round-trip decimal",
            },
            "probe_ids": probe_ids,
            "prompts": prompts,
        }
        dst = OUT / f"{name}.json"
        with open(dst, "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        mins = {p["name"]: p["greedy"]["min_margin"] for p in prompts}
        print(f"[{name}] wrote {dst} ({dst.stat().st_size} bytes); min greedy margins {mins}", file=sys.stderr)
        del model, npref


if __name__ == "__main__":
    main()
