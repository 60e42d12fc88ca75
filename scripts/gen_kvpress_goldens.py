#!/usr/bin/env python3
"""KV-policy goldens from an independent implementation: NVIDIA kvpress on the same GGUF, through HF transformers.

For a few fixed prompts (KJV text from data/kjv.txt plus a question), runs kvpress's presses at one fixed budget
and records which prompt tokens each (layer, kv-head) keeps. tests/kv_kvpress_fidelity_test.cpp runs the engine's
policies on the same token ids with an f32 cache and compares its kept positions with these; it needs none of this.

Writes tests/golden/kvpress/smollm2.json (--set query_agnostic: smollm2_query_agnostic.json, Expected Attention). Per prompt: name, text, input_ids (no BOS: the GGUF's add_bos is false,
as in tests/golden/logits), n_tokens. Per (press, prompt), in `cases`:

    press, prompt, params    the kvpress class and its arguments (compression_ratio chosen so that kvpress keeps
                             exactly `budget` tokens: compute_n_kept(n, ratio) == budget)
    engine_spec              the engine's --kv spec for the same method and budget (the test appends +full:type=f32)
    budget                   tokens kept per (layer, kv-head) (PyramidKV: the mean over layers)
    n_kept                   (n_layer) tokens kvpress kept in each layer (every kv-head of a layer keeps as many)
    masks                    the distinct sets of kept prompt positions, each a bitmask in base64 (RFC 4648,
                             padded): position p is bit p % 8 (least significant first) of byte p // 8
    kept                     (n_layer, n_kv_head) index into masks of what each (layer, kv-head) kept
    next                     (scored presses only) (n_layer, n_kv_head) the next NEXT_RANKED positions in kvpress's
                             score order after the kept ones, best first: what kvpress would keep with a larger
                             budget (PyramidKV as its paper, with the window on top of the layer's budget, keeps
                             `window_size` more per layer than kvpress), and near misses for a reader
    boundary_gap             (scored presses only) (n_layer, n_kv_head) (s_last_kept - s_first_dropped) / s_last_kept
                             of kvpress's scores: how close the cut was (a near tie flips on rounding noise)

ChunkKV and AdaKV wrap SnapKVPress (kvpress's ChunkKVPress(SnapKVPress), AdaKVPress(SnapKVPress)):

    chunkkv   kvpress tiles the whole prompt into chunks of chunk_length from position 0, window included, and keeps
              int(n_chunks * (1 - ratio)) whole chunks by their mean score (all kv-heads summed: one set per
              layer); the window's scores are max + 1, so its chunks always stay. The engine tiles the tokens
              before the window and keeps the window plus (budget - window) / chunk chunks. So that both mean the
              same chunks, window_size is chosen per prompt so that n - window_size is a multiple of chunk_length,
              the ratio so that kvpress keeps the window's chunks plus k more, and the engine's budget is window +
              k * chunk_length; kernel_size = 1 (no pooling, the engine's default). `next`: the positions of the
              next chunks by score, best first; `boundary_gap` from the chunk scores.
    adakv     kvpress keeps, per layer, the top n_kv_head * n_kept scores of all heads together after each head's
              top int(alpha * n_kept) are forced in; heads keep different counts. `n_kept_heads`
              (n_layer, n_kv_head) records them (n_kept is the per-head mean, the budget); `next` and
              `boundary_gap` are per head, from the scores after the safeguard.

How the kept indices are captured: each press's `score` and `compress` are wrapped; the wrapper recomputes
`scores.topk(n_kept)` on the captured scores, exactly as ScorerPress.compress / PyramidKVPress.compress do, and
checks that gathering the input keys at those indices gives the compressed keys bit for bit.

kvpress compresses the cache of each layer in a forward hook after that layer's attention, during prefill only, so
every layer sees the full, uncompressed prompt (as the engine's after-prefill hook does). The whole prompt
(context and question) is compressed, as the engine does with a plain prompt.

Rerun (from the repo root, ~2 minutes on one core):

    python3 -m venv /work/venv-kvpress
    /work/venv-kvpress/bin/pip install -r scripts/requirements-kvpress.txt
    /work/venv-kvpress/bin/python scripts/gen_kvpress_goldens.py [--threads N] [--presses chunkkv,adakv]

(--presses recomputes those presses' cases only and keeps the file's other cases.)

SmolLM2 only: kvpress compresses Gemma 3's global layers alone (in Gemma3ForConditionalGeneration), while the
engine's policy covers every layer and expires the sliding-window layers by their window.

PyPI's Linux torch wheel is the CUDA build (its nvidia-* dependencies are ~5 GB); only its CPU path runs here.
kvpress 0.5.5 needs transformers < 5.3 and huggingface_hub < 1.0, which resolves to transformers 4.57. Nothing comes
from a model hub (HF_HUB_OFFLINE=1): transformers builds the config and tokenizer from the GGUF's metadata and
dequantizes its tensors to float32. Models come from $LONGCTX_MODEL_DIR or ~/.cache/longctx; the header records
the file's sha256. Deterministic for fixed package versions.
"""
import argparse
import base64
import hashlib
import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "kvpress"
MODEL_DIR = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache" / "longctx"))
KJV = ROOT / "data" / "kjv.txt"

SCHEMA = "longctx-kvpress-golden/1"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEXT_RANKED = 16  # = PyramidKV's window below, the most the test extends a kept set by
BUDGET_FRACTION = 4  # budget = n_tokens // 4: kvpress's compression_ratio ~0.75

# Prompts: verses of data/kjv.txt (scripts/setup.sh: one verse a line, text only), 1-based first line and count,
# joined with "\n", hashed so that another KJV text is caught; then a question, plain or in SmolLM2's ChatML.
PROMPTS = [
    {"name": "ruth_plain", "first_line": 7129, "n_lines": 40, "style": "plain",  # Ruth 1:1 - 2:18
     "sha256": "722378d4938033e4d2bfc58c36689ca37d2f67ce14e9c5fe5ec9b3605cb51e85",
     "question": "Question: In whose field did Ruth glean?\nAnswer:"},
    {"name": "samuel_chat", "first_line": 7214, "n_lines": 40, "style": "chat",  # 1 Samuel 1:1 - 2:12
     "sha256": "bd7489998b62e0ceb8e905c12603e919ab7785d6e03d645c9d6c554bf1d6d1a7",
     "question": "Who is the mother of Samuel?"},
]

# The presses and the engine specs that mean the same method at the same budget (B is filled in per prompt).
PRESSES = [
    {"press": "snapkv", "class": "SnapKVPress", "args": {"window_size": 32, "kernel_size": 7},
     "engine_spec": "snapkv:budget={B},window=32,pool=7,pooling=avg"},
    {"press": "streaming", "class": "StreamingLLMPress", "args": {"n_sink": 4},
     "engine_spec": "streaming:budget={B},sink=4"},
    {"press": "tova", "class": "TOVAPress", "args": {},
     "engine_spec": "tova:budget={B}"},
    {"press": "pyramidkv", "class": "PyramidKVPress", "args": {"window_size": 16, "kernel_size": 7, "beta": 20},
     "engine_spec": "pyramid:budget={B},beta=20+snapkv:window=16,pool=7,pooling=avg"},
    # Wrappers of SnapKVPress ("inner"); {W}: the per-prompt window (ChunkKV).
    {"press": "chunkkv", "class": "ChunkKVPress", "args": {"chunk_length": 10},
     "inner": "SnapKVPress", "inner_args": {"window_size": "{W}", "kernel_size": 1},
     "engine_spec": "chunkkv:budget={B},window={W},chunk=10,pool=1,align=none"},
    {"press": "adakv", "class": "AdaKVPress", "args": {"alpha_safeguard": 0.2},
     "inner": "SnapKVPress", "inner_args": {"window_size": 32, "kernel_size": 7},
     "engine_spec": "snapkv:budget={B},window=32,pool=7,pooling=avg+adakv:alpha=0.2"},
]
CHUNK_WINDOW = 32  # ChunkKV's window: at least this, raised so that n - window is a multiple of chunk_length

# The query-agnostic presses, written to their own file (--set query_agnostic): Expected Attention scores the cache
# from the prompt's query statistics, no question needed. (KVzipPress is not compared: it restricts each
# reconstruction query's softmax to its chunk and shares one budget over all heads of a layer, which the engine's
# kvzip does not do.)
QUERY_AGNOSTIC_PRESSES = [
    {"press": "expected", "class": "ExpectedAttentionPress",
     "args": {"n_future_positions": 512, "n_sink": 4, "use_covariance": True, "use_vnorm": True, "epsilon": 0.0},
     "engine_spec": "expected:budget={B},future=512,sink=4,cov=1,vnorm=1,eps=0"},
]
SETS = {"main": (PRESSES, "smollm2.json"), "query_agnostic": (QUERY_AGNOSTIC_PRESSES, "smollm2_query_agnostic.json")}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pkg_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def prompt_text(p, lines, check):
    body = "\n".join(lines[p["first_line"] - 1: p["first_line"] - 1 + p["n_lines"]])
    digest = hashlib.sha256(body.encode()).hexdigest()
    if check and p["sha256"] and digest != p["sha256"]:
        sys.exit(f"{p['name']}: KJV lines have sha256 {digest}, expected {p['sha256']}: another data/kjv.txt?")
    if p["style"] == "chat":
        text = f"<|im_start|>user\n{body}\n\n{p['question']}<|im_end|>\n<|im_start|>assistant\n"
    else:
        text = f"{body}\n\n{p['question']}"
    return text, digest


def mask_b64(indices, n):
    bits = bytearray((n + 7) // 8)
    for i in indices:
        bits[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(bits)).decode()


def ratio_for(n, budget):
    """A compression_ratio for which kvpress keeps exactly `budget` of n tokens (int() truncation included)."""
    from kvpress.utils import compute_n_kept

    r = 1.0 - budget / n
    for _ in range(64):
        if compute_n_kept(n, r) == budget:
            return r
        r = r - 1e-12 if compute_n_kept(n, r) < budget else r + 1e-12
    sys.exit(f"no compression_ratio keeps {budget} of {n}")


def run_press(model, ids, spec, budget):
    import torch
    import kvpress
    from transformers import DynamicCache

    n = len(ids)
    ratio = ratio_for(n, budget)
    press = getattr(kvpress, spec["class"])(compression_ratio=ratio, **spec["args"])
    scored = spec["press"] != "streaming"  # StreamingLLM's scores are 0/1 by position: no ranking to record
    got = {}
    orig_score, orig_compress = press.score, press.compress

    def score(module, hidden_states, keys, values, attentions, kwargs):
        s = orig_score(module, hidden_states, keys, values, attentions, kwargs)
        got[module.layer_idx] = {"scores": s.detach().clone(), "keys": keys.detach().clone()}
        return s

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        k2, v2 = orig_compress(module, hidden_states, keys, values, attentions, kwargs)
        got[module.layer_idx]["out"] = k2.detach().clone()
        return k2, v2

    press.score, press.compress = score, compress
    with torch.no_grad(), press(model):
        model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

    n_layer = model.config.num_hidden_layers
    if sorted(got) != list(range(n_layer)):
        sys.exit(f"{spec['press']}: the press ran on layers {sorted(got)}")
    n_kept, kept, nxt, gaps, masks = [], [], [], [], {}
    for layer in range(n_layer):
        g = got[layer]
        s, keys, out = g["scores"][0], g["keys"], g["out"]  # s: (n_kv_head, n)
        k = out.shape[2]
        idx = s.topk(k, dim=-1).indices  # what the press gathered
        again = keys.gather(2, idx[None, :, :, None].expand(-1, -1, -1, keys.shape[-1]))
        if not torch.equal(again, out):
            sys.exit(f"{spec['press']} layer {layer}: the recomputed top-k does not give the compressed keys")
        n_kept.append(int(k))
        kept.append([masks.setdefault(mask_b64([int(i) for i in row], n), len(masks)) for row in idx])
        if scored:
            deeper = s.topk(min(n, k + NEXT_RANKED), dim=-1)
            rows, gap_row = [], []
            for h in range(s.shape[0]):
                if set(deeper.indices[h, :k].tolist()) != set(idx[h].tolist()):
                    sys.exit(f"{spec['press']} layer {layer} head {h}: ties at the cut make the ranking ambiguous")
                rows.append([int(i) for i in deeper.indices[h, k:]])
                last, first_out = float(deeper.values[h, k - 1]), float(deeper.values[h, k]) if k < n else 0.0
                gap_row.append(float(f"{(last - first_out) / last:.4g}") if last > 0 else 0.0)
            nxt.append(rows)
            gaps.append(gap_row)
    if spec["press"] == "pyramidkv":
        # The pyramid, not kvpress's fallback to a uniform budget (when min_num < window_size); no layer's budget
        # near x.5, where Python's round (kvpress) and the engine's lround could part.
        w, beta = spec["args"]["window_size"], spec["args"]["beta"]
        lo = budget / beta
        hi = 2 * budget - lo
        exact = [hi - layer * (hi - lo) / (n_layer - 1) for layer in range(n_layer)]
        if len(set(n_kept)) == 1 or lo < w:
            sys.exit(f"pyramidkv fell back to a uniform budget: budget / beta = {lo} < window_size = {w}")
        if any(abs(v % 1 - 0.5) < 1e-6 for v in exact):
            sys.exit("a pyramid layer budget is at x.5: pick another budget")
    rec = {
        "press": spec["press"],
        "params": {"class": spec["class"], "compression_ratio": ratio, **spec["args"]},
        "engine_spec": spec["engine_spec"].format(B=budget),
        "budget": budget,
        "n_kept": n_kept,
        "masks": list(masks),  # insertion order: the indices in kept
        "kept": kept,
    }
    if scored:
        rec["next"] = nxt
        rec["boundary_gap"] = gaps
    return rec


def chunkkv_plan(n, spec):
    """(window, budget, ratio): the window makes n - window a multiple of chunk_length; kvpress then keeps the
    window's chunks plus k chunks before it, which the engine's budget = window + k * chunk_length means."""
    c = spec["args"]["chunk_length"]
    w = CHUNK_WINDOW + (n - CHUNK_WINDOW) % c
    k = max(1, (n // BUDGET_FRACTION - w) // c)
    n_chunks = -(-n // c)
    keep_chunks = -(-w // c) + k
    ratio = 1.0 - (keep_chunks + 0.5) / n_chunks
    if int(n_chunks * (1 - ratio)) != keep_chunks:
        sys.exit(f"chunkkv: no ratio keeps {keep_chunks} of {n_chunks} chunks")
    return w, w + k * c, ratio


def run_wrapped(model, ids, spec, budget):
    """ChunkKVPress / AdaKVPress around SnapKVPress: captures the inner scores and recomputes what the wrapper kept
    (checked against its output: the gathered keys for ChunkKV, the masked indices for AdaKV)."""
    import torch
    import kvpress
    from kvpress.utils import compute_n_kept
    from transformers import DynamicCache

    n = len(ids)
    inner_args = dict(spec["inner_args"])
    if spec["press"] == "chunkkv":
        window, budget, ratio = chunkkv_plan(n, spec)
        inner_args["window_size"] = window
    else:
        window, ratio = inner_args["window_size"], ratio_for(n, budget)
    inner = getattr(kvpress, spec["inner"])(compression_ratio=ratio, **inner_args)
    press = getattr(kvpress, spec["class"])(press=inner, **spec["args"])
    got = {}
    orig_score, orig_compress = inner.score, press.compress

    def score(module, hidden_states, keys, values, attentions, kwargs):
        s = orig_score(module, hidden_states, keys, values, attentions, kwargs)
        got[module.layer_idx] = {"scores": s.detach().clone(), "keys": keys.detach().clone()}
        return s

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        k2, v2 = orig_compress(module, hidden_states, keys, values, attentions, kwargs)
        g = got[module.layer_idx]
        g["out"] = k2.detach().clone()
        g["masked"] = getattr(module, "masked_key_indices", None)
        return k2, v2

    inner.score, press.compress = score, compress
    with torch.no_grad(), press(model):
        model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

    n_layer = model.config.num_hidden_layers
    if sorted(got) != list(range(n_layer)):
        sys.exit(f"{spec['press']}: the press ran on layers {sorted(got)}")
    n_kept, n_kept_heads, kept, nxt, gaps, masks = [], [], [], [], [], {}
    for layer in range(n_layer):
        g = got[layer]
        s, keys = g["scores"][0], g["keys"]  # s: (n_kv_head, n)
        h_kv = s.shape[0]
        if spec["press"] == "chunkkv":
            c = spec["args"]["chunk_length"]
            n_full, rem = n // c, n % c
            per_tok = s.sum(0)  # all kv-heads summed: one set per layer
            chunk_scores = per_tok[: n_full * c].view(n_full, c).mean(-1)
            if rem:
                chunk_scores = torch.cat([chunk_scores, per_tok[-rem:].mean(-1, keepdim=True)])
            n_keep = max(1, int((n_full + (rem > 0)) * (1 - ratio)))
            order = chunk_scores.sort(descending=True, stable=True).indices.tolist()
            top = chunk_scores.topk(n_keep).indices.tolist()
            if sorted(top) != sorted(order[:n_keep]):
                sys.exit(f"chunkkv layer {layer}: ties at the chunk cut make the ranking ambiguous")

            def span(i):
                return list(range(i * c, min((i + 1) * c, n)))

            idx = sorted(p for i in top for p in span(i))
            again = keys[:, :, idx]
            if not torch.equal(again, g["out"]):
                sys.exit(f"chunkkv layer {layer}: the recomputed chunks do not give the compressed keys")
            if len(idx) != budget or any(p not in idx for p in range(n - window, n)):
                sys.exit(f"chunkkv layer {layer}: kept {len(idx)} tokens, expected the window plus chunks = {budget}")
            rows = [idx] * h_kv
            later = [p for i in order[n_keep:] for p in span(i)][:NEXT_RANKED]
            nxt.append([later] * h_kv)
            last, first_out = float(chunk_scores[order[n_keep - 1]]), float(chunk_scores[order[n_keep]])
            gaps.append([float(f"{(last - first_out) / last:.4g}") if last > 0 else 0.0] * h_kv)
        else:
            # AdaKV's rule on the captured scores: each head's top n_safe forced in, then the top h_kv * n_kept of
            # the layer; checked against the indices it masked.
            nk = compute_n_kept(n, ratio)
            n_safe = max(1, int(nk * spec["args"]["alpha_safeguard"]))
            s2 = s.clone()
            s2.scatter_(-1, s2.topk(n_safe, dim=-1).indices, torch.finfo(s2.dtype).max)
            flat = s2.reshape(-1)
            keep_flat = flat.topk(h_kv * nk).indices
            keep_mask = torch.zeros_like(flat, dtype=torch.bool)
            keep_mask[keep_flat] = True
            b, hh, ss = g["masked"]
            pruned = torch.zeros_like(flat, dtype=torch.bool)
            pruned[hh * n + ss] = True
            if not torch.equal(pruned, ~keep_mask):
                sys.exit(f"adakv layer {layer}: the recomputed selection differs from the masked indices")
            km = keep_mask.view(h_kv, n)
            rows = [torch.nonzero(km[h]).flatten().tolist() for h in range(h_kv)]
            nxt_row, gap_row = [], []
            for h in range(h_kv):
                dropped = s2[h].masked_fill(km[h], float("-inf"))
                best = dropped.topk(min(NEXT_RANKED, n - len(rows[h]))) if len(rows[h]) < n else None
                nxt_row.append([int(i) for i in best.indices] if best is not None else [])
                last = float(s2[h][km[h]].min())
                first_out = float(best.values[0]) if best is not None else 0.0
                gap_row.append(float(f"{(last - first_out) / last:.4g}") if last > 0 else 0.0)
            nxt.append(nxt_row)
            gaps.append(gap_row)
            n_kept_heads.append([len(r) for r in rows])
            if sum(n_kept_heads[-1]) != h_kv * nk:
                sys.exit(f"adakv layer {layer}: kept {sum(n_kept_heads[-1])}, expected {h_kv * nk}")
        n_kept.append(len(rows[0]) if spec["press"] == "chunkkv" else budget)
        kept.append([masks.setdefault(mask_b64(r, n), len(masks)) for r in rows])
    params = {"class": spec["class"], **spec["args"], "press": {"class": spec["inner"], "compression_ratio": ratio,
                                                                  **inner_args}}
    if spec["press"] == "chunkkv":
        params["window_size"] = window  # where the test looks for a window
    rec = {
        "press": spec["press"],
        "params": params,
        "engine_spec": spec["engine_spec"].format(B=budget, W=window),
        "budget": budget,
        "n_kept": n_kept,
        "masks": list(masks),
        "kept": kept,
        "next": nxt,
        "boundary_gap": gaps,
    }
    if n_kept_heads:
        rec["n_kept_heads"] = n_kept_heads
    return rec


def compact_json(doc):
    """indent=1, but every list of scalars on one line (the bitmask and index rows stay readable and small)."""
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    scalar = r'(?:-?[0-9.eE+-]+|"[^"\n]*"|true|false|null)'
    pattern = re.compile(r"\[\s*(" + scalar + r"(?:,\s*" + scalar + r")*)\s*\]")
    return pattern.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--print-hashes", action="store_true", help="print the KJV excerpts' sha256 and stop")
    ap.add_argument("--presses", default="", help="comma-separated presses to recompute; the file's others are kept")
    ap.add_argument("--set", choices=sorted(SETS), default="main",
                    help="main: the presses of smollm2.json; query_agnostic: those of smollm2_query_agnostic.json")
    args = ap.parse_args()

    lines = KJV.read_text().split("\n")
    if args.print_hashes:
        for p in PROMPTS:
            print(p["name"], prompt_text(p, lines, False)[1])
        return

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    path = MODEL_DIR / MODEL_FILE
    if not path.exists():
        sys.exit(f"{path} is missing: run scripts/setup.sh")
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.eval()
    cfg = model.config
    want = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
    bad = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
    if bad:
        sys.exit(f"config differs from SmolLM2-135M's: {bad}")

    only = [x for x in args.presses.split(",") if x]
    unknown = set(only) - {p["press"] for p in SETS[args.set][0]}
    if unknown:
        sys.exit(f"unknown presses {sorted(unknown)}")
    prompts, cases = [], []
    for p in PROMPTS:
        text, digest = prompt_text(p, lines, True)
        # No BOS: the GGUF says add_bos_token=false (our tokenizer and tests/golden/logits agree); transformers 4.57's
        # GGUF tokenizer would add one by default.
        ids = [int(i) for i in tok(text, add_special_tokens=False).input_ids]
        n = len(ids)
        budget = n // BUDGET_FRACTION
        print(f"[{p['name']}] {n} tokens, budget {budget}", file=sys.stderr)
        prompts.append({"name": p["name"], "kjv_lines": [p["first_line"], p["n_lines"]], "kjv_sha256": digest,
                        "style": p["style"], "text": text, "n_tokens": n, "input_ids": ids})
        for spec in SETS[args.set][0]:
            if only and spec["press"] not in only:
                continue
            rec = (run_wrapped if "inner" in spec else run_press)(model, ids, spec, budget)
            print(f"  {spec['press']}: kept per layer {rec['n_kept'][0]}..{rec['n_kept'][-1]}", file=sys.stderr)
            cases.append({"prompt": p["name"], **rec})

    doc = {
        "schema": SCHEMA,
        "model": {"name": "smollm2", "file": MODEL_FILE, "sha256": sha256_file(path), "n_layer": cfg.num_hidden_layers,
                  "n_head": cfg.num_attention_heads, "n_head_kv": cfg.num_key_value_heads},
        "reference": {
            "name": "kvpress",
            "version": pkg_version("kvpress"),
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
            "gguf": pkg_version("gguf"),
            "python": platform.python_version(),
            "dtype": "float32",
            "device": "cpu",
            "attn_implementation": "sdpa (the presses compute their own window attention from the queries)",
            "kv_cache": "transformers DynamicCache, float32",
        },
        "generated_by": "python3 scripts/gen_kvpress_goldens.py" + ("" if args.set == "main" else f" --set {args.set}"),
        "conventions": {
            "positions": "0-based index into input_ids",
            "masks": "base64 bitmask over positions: position p is bit p % 8 (LSB first) of byte p // 8",
            "kept": "(n_layer, n_head_kv) indices into the case's masks",
            "next": f"the {NEXT_RANKED} positions after the kept ones in kvpress's score order, best first",
            "budget": f"n_tokens // {BUDGET_FRACTION}; kvpress's compression_ratio is chosen to keep exactly that",
        },
        "prompts": prompts,
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    dst = OUT / SETS[args.set][1]
    if only:
        old = json.loads(dst.read_text())
        if old["prompts"] != prompts or old["model"] != doc["model"]:
            sys.exit(f"{dst} was made from other prompts or another model: rerun without --presses")
        new_cases = cases
        cases = [c for c in old["cases"] if c["press"] not in only]
        for spec in SETS[args.set][0]:  # the set's order, prompt order within
            cases += [c for c in new_cases if c["press"] == spec["press"]]
        doc["cases"] = cases
    dst.write_text(compact_json(doc) + "\n")
    print(f"wrote {dst} ({dst.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
