#!/usr/bin/env python3
"""NVIDIA kvpress answering the very prompts of `longctx eval`, scored by the same rule: the engine's policies beside
kvpress's version of the same method, at the same compression ratios.

    build/release/longctx eval needle,multikey -m MODEL ... -o eval.json --prompts-out prompts.jsonl --kv full
    /work/venv-kvpress/bin/python scripts/kvpress_answers.py prompts.jsonl -o kvpress.json [--engine eval.json]

For every prompt of the JSONL (`longctx eval --prompts-out`: the token ids the engine prefilled, chat template and
bos included) and every press at every compression ratio, runs transformers + kvpress on CPU in float32 on the same
GGUF (transformers dequantizes it) and decodes greedily, as the engine does: at most n_predict tokens, ending
without the token at an end-of-generation id (the file's eog_ids) and before a stop string. Each prompt is also
answered with the full cache (policy "full"); its answers should be the engine's `--kv full` answers (--engine
prints the comparison).

How the press runs, as kvpress documents it (its pipeline does the same with a question of its own):

    n_compressed == 0  the whole prompt is prefilled under `with press(model)`: each layer's cache is compressed by
                       the press's forward hook right after that layer's attention, so every layer sees the full
                       prompt and the first answer token comes from the uncompressed prefill's logits; then greedy
                       decode over the compressed cache.
    n_compressed > 0   (`longctx eval --question-after-compress`) the first n_compressed tokens are prefilled and
                       compressed under the press; the rest (question and assistant turn) is fed after it over the
                       compressed cache, outside the press; then greedy decode.

That is what --separate runs, one prefill per (prompt, press, ratio). The default gives the same caches from one
prefill per prompt (answers_shared says why they are the same; --separate checks it) and computes KVzip's
reconstruction scores once per prompt for all ratios.

Positions continue from the uncompressed length (explicit position_ids, as kvpress's pipeline passes them), since a
compressed cache's length is no longer the next position. AdaKV and KVzip do not shrink the cache: they mask the
pruned (head, position) pairs in every later attention (kvpress's attention patch); kept_fraction counts them as
gone.

The presses and their parameters follow scripts/gen_kvpress_goldens.py (the engine's specs that mean the same method
are in the output's `presses`); ChunkKV's chunk is 20 tokens here. A compression_ratio r keeps
int(n * (1 - r)) of n tokens (per layer and kv-head; AdaKV per layer, KVzip over the whole model): 0.5, 0.75, 0.875
and 0.95 are the engine's budget=1/2, 1/4, 1/8 and 1/20 (the engine takes the fraction of the case's length, prompt
and answer, kvpress of the compressed tokens: ~1.5% apart at 4K).

Writes a JSON shaped like `longctx eval`'s results (meta, cases with task, policy "kvpress:SnapKVPress@0.75" or
"full", length, depth, seed, expected, got, correct, n_prompt, n_generated, kept_fraction, seconds; summary),
rewritten after every case so that a killed run leaves a valid file. `--presses none` gives the full cache alone,
directly comparable with `longctx eval --kv full` by scripts/compare_eval_answers.py.

Needs the venv of scripts/requirements-kvpress.txt (kvpress 0.5.5, transformers 4.57). Nothing comes from a hub.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# The presses by short name: kvpress class, arguments, a wrapped inner press, and the engine's spec of the same
# method ({F}: the budget fraction). Parameters as in scripts/gen_kvpress_goldens.py.
PRESSES = {
    "snapkv": {"class": "SnapKVPress", "args": {"window_size": 32, "kernel_size": 7},
               "engine_spec": "snapkv:budget={F},window=32,pool=7,pooling=avg"},
    "chunkkv": {"class": "ChunkKVPress", "args": {"chunk_length": 20},
                "inner": "SnapKVPress", "inner_args": {"window_size": 32, "kernel_size": 1},
                "engine_spec": "chunkkv:budget={F},window=32,chunk=20,pool=1,align=none"},
    "adakv": {"class": "AdaKVPress", "args": {"alpha_safeguard": 0.2},
              "inner": "SnapKVPress", "inner_args": {"window_size": 32, "kernel_size": 7},
              "engine_spec": "snapkv:budget={F},window=32,pool=7,pooling=avg+adakv:alpha=0.2"},
    "expected": {"class": "ExpectedAttentionPress",
                 "args": {"n_future_positions": 512, "n_sink": 4, "use_covariance": True, "use_vnorm": True,
                          "epsilon": 0.0},
                 "engine_spec": "expected:budget={F},future=512,sink=4,cov=1,vnorm=1,eps=0"},
    # KVzip (Kim et al. 2025): scores by reconstructing the context; one budget over all layers and heads (not
    # the engine's per-(layer, head) budget), chunks of 2048 tokens.
    "kvzip": {"class": "KVzipPress", "args": {"n_sink": 4, "layerwise": False, "chunk_size": 2048},
              "engine_spec": "kvzip:budget={F},chunk=2048,sink=4,alloc=global"},
}
DEFAULT_PRESSES = "snapkv,chunkkv,adakv,expected,kvzip"
DEFAULT_RATIOS = "0.5,0.75,0.875,0.95"
MODEL_DIR = Path(os.environ.get("LONGCTX_MODEL_DIR", Path.home() / ".cache" / "longctx"))


def score_answer(expected, answer):
    """eval_tasks.cpp's score_answer: every expected value occurs with no ASCII letter or digit beside it."""
    if not expected:
        return False

    def is_word(ch):
        return ch.isascii() and ch.isalnum()

    for e in expected:
        at, found = answer.find(e), False
        while at != -1:
            left_ok = at == 0 or not is_word(answer[at - 1])
            end = at + len(e)
            right_ok = end == len(answer) or not is_word(answer[end])
            if left_ok and right_ok:
                found = True
                break
            at = answer.find(e, at + 1)
        if not found:
            return False
    return True


def policy_name(press, ratio):
    return "full" if press is None else f"kvpress:{PRESSES[press]['class']}@{ratio:g}"


def make_press(name, ratio):
    import kvpress

    spec = PRESSES[name]
    if "inner" in spec:
        inner = getattr(kvpress, spec["inner"])(compression_ratio=ratio, **spec["inner_args"])
        return getattr(kvpress, spec["class"])(press=inner, **spec["args"])
    return getattr(kvpress, spec["class"])(compression_ratio=ratio, **spec["args"])


def _decode(model, tok, p, cache, logits, masks):
    """Feeds the tokens after n_compressed (if any) over the cache, then decodes greedily as the engine does.
    logits: the prefill's last row when the whole prompt was prefilled; masks: per layer, kvpress's masked
    (batch, head, position) indices or None. Returns (text, n_generated, seconds)."""
    import torch

    for layer, m in zip(model.model.layers, masks):
        layer.self_attn.masked_key_indices = m
    n = len(p["tokens"])
    nc = p["n_compressed"] or n
    t0 = time.perf_counter()
    with torch.no_grad():
        if nc < n:
            out = model(input_ids=torch.tensor([p["tokens"][nc:]]), past_key_values=cache, use_cache=True,
                        logits_to_keep=1, position_ids=torch.arange(nc, n).unsqueeze(0))
            logits = out.logits[0, -1]
        eog = set(p["eog_ids"])
        gen = []
        pos = n
        nxt = int(logits.argmax())  # the first maximum: ties to the lowest id, as the engine's greedy sampler
        while len(gen) < p["n_predict"] and nxt not in eog:
            gen.append(nxt)
            text = tok.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if any(s in text for s in p["stop"]) or len(gen) == p["n_predict"]:
                break
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True,
                        position_ids=torch.tensor([[pos]]))
            pos += 1
            nxt = int(out.logits[0, -1].argmax())
    text = tok.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for s in p["stop"]:
        if s in text:
            text = text[: text.index(s)]
    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    return text, len(gen), time.perf_counter() - t0


def _masks(model):
    return [getattr(layer.self_attn, "masked_key_indices", None) for layer in model.model.layers]


def kept_fraction(model, cache, masks, n):
    """Kept (layer, kv-head, position) entries of the n compressed tokens over all of them; masked pairs (AdaKV,
    KVzip) count as gone."""
    n_kv = model.config.num_key_value_heads
    kept = sum(cache.layers[i].keys.shape[2] * n_kv - (len(m[0]) if m is not None else 0) for i, m in enumerate(masks))
    return kept / (len(masks) * n * n_kv)


def answer_separate(model, tok, p, press_name, ratio):
    """One run the documented kvpress way: a fresh prefill under `with press(model)`. Returns (text, n_generated,
    kept_fraction, prefill seconds, decode seconds)."""
    import torch
    from transformers import DynamicCache

    n = len(p["tokens"])
    nc = p["n_compressed"] or n
    cache = DynamicCache()
    press = None if press_name is None else make_press(press_name, ratio)
    t0 = time.perf_counter()
    with torch.no_grad(), (press(model) if press is not None else contextlib.nullcontext()):
        out = model(input_ids=torch.tensor([p["tokens"][:nc]]), past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    masks = _masks(model)
    kept = kept_fraction(model, cache, masks, nc)
    t_pre = time.perf_counter() - t0
    text, n_gen, t_dec = _decode(model, tok, p, cache, out.logits[0, -1], masks)
    return text, n_gen, kept, t_pre, t_dec


def answers_shared(model, tok, p, runs):
    """Every run of one prompt from one prefill. A press compresses a layer's cache in a hook after that layer's
    attention, and no layer reads another's cache during prefill, so every press sees the same (hidden states,
    keys, values) in every layer whichever press runs: one prefill hands them to all presses (each one's
    compress on the same inputs, as its own hook would call it) and keeps each one's compressed cache. KVzip
    scores by reconstructing the context once; its ratio only sets how many of those scores are kept, so its
    scores are computed once and cut at each ratio. Yields (run, (text, n_generated, kept, prefill s, decode s))
    in the order of runs; --separate checks that this gives the answers of one prefill per run."""
    import torch
    import kvpress
    from kvpress.presses.base_press import is_prefilling
    from kvpress.utils import extract_keys_and_values
    from transformers import DynamicCache

    n = len(p["tokens"])
    nc = p["n_compressed"] or n
    ids = torch.tensor([p["tokens"][:nc]])
    scorers = {(name, r): make_press(name, r) for name, r in runs if name is not None and name != "kvzip"}
    outs = {k: [None] * model.config.num_hidden_layers for k in scorers}

    class Fanout(kvpress.BasePress):
        def post_init_from_model(self, m):
            for press in scorers.values():
                press.post_init_from_model(m)

        def forward_hook(self, module, input, kwargs, output):
            hidden_states = kwargs["hidden_states"]
            if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
                return output
            keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
            for k, press in scorers.items():
                module.masked_key_indices = None
                k2, v2 = press.compress(module, hidden_states, keys, values, output[1], kwargs)
                outs[k][module.layer_idx] = (k2, v2, module.masked_key_indices)
            module.masked_key_indices = None
            return output

    t0 = time.perf_counter()
    full = DynamicCache()
    with torch.no_grad(), Fanout()(model):
        logits = model(input_ids=ids, past_key_values=full, use_cache=True, logits_to_keep=1).logits[0, -1]
    t_pre = time.perf_counter() - t0
    no_masks = [None] * model.config.num_hidden_layers

    kvzip_cut = None
    if any(name == "kvzip" for name, _ in runs):
        t0 = time.perf_counter()
        stash = {}

        class KVzipScores(kvpress.KVzipPress):
            def compress_post(self, m):
                stash["scores"] = self.score_val.clone()
                super().compress_post(m)

        kz = KVzipScores(compression_ratio=0.5, **PRESSES["kvzip"]["args"])
        zcache = DynamicCache()
        with torch.no_grad(), kz(model):
            model.model(input_ids=ids, past_key_values=zcache, use_cache=True)
        assert zcache.get_seq_length() == nc, "KVzip left more than the context in the cache"
        t_kz = time.perf_counter() - t0

        def kvzip_cut(r):
            kz.compression_ratio = r
            kz.score_val = stash["scores"].clone()
            kz.compress_post(model)
            m = _masks(model)
            for layer in model.model.layers:
                layer.self_attn.masked_key_indices = None
            return copy.deepcopy(zcache), m

    for name, r in runs:
        if name is None:
            cache, masks, pre = copy.deepcopy(full), no_masks, t_pre
        elif name == "kvzip":
            cache, masks = kvzip_cut(r)
            pre = t_kz
        else:
            cache = copy.deepcopy(full)
            masks = []
            for i, (k2, v2, m) in enumerate(outs[(name, r)]):
                cache.layers[i].keys, cache.layers[i].values = k2, v2
                masks.append(m)
            pre = t_pre
        kept = kept_fraction(model, cache, masks, nc)
        text, n_gen, t_dec = _decode(model, tok, p, cache, logits, masks)
        yield (name, r), (text, n_gen, kept, pre, t_dec)


def load(model_path, threads):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    d, f = str(Path(model_path).parent), Path(model_path).name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    # KVzipPress loads a tokenizer by the model's name_or_path, which a GGUF directory cannot give: hand it this one.
    import kvpress.presses.kvzip_press as kz

    class _Tok:
        @staticmethod
        def from_pretrained(*a, **k):
            return tok

    kz.AutoTokenizer = _Tok
    return model, tok


def summarize(cases, policies):
    out = []
    for pol in policies:
        cs = [c for c in cases if c["policy"] == pol]
        if not cs:
            continue
        acc = {}
        for c in cs:
            a = acc.setdefault(c["task"], [0, 0])
            a[0] += c["correct"]
            a[1] += 1
        out.append({"policy": pol, "accuracy": {t: a[0] / a[1] for t, a in acc.items()},
                    "correct": {t: f"{a[0]}/{a[1]}" for t, a in acc.items()},
                    "kept_fraction": sum(c["kept_fraction"] for c in cs) / len(cs)})
    return out


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def compare_with_engine(cases, engine_path):
    """The full cache's answers against `longctx eval --kv full`'s on the same prompts."""
    eng = {(c["task"], c["length"], c["depth"], c["seed"]): c for c in json.load(open(engine_path))["cases"]
           if c["policy"] == "full" and c["task"] != "ppl"}
    n = same_text = same_correct = 0
    for c in cases:
        if c["policy"] != "full":
            continue
        e = eng.get((c["task"], c["length"], c["depth"], c["seed"]))
        if e is None:
            continue
        n += 1
        same_text += e["got"] == c["got"]
        same_correct += e["correct"] == c["correct"]
        if e["got"] != c["got"]:
            i = next((i for i, (x, y) in enumerate(zip(e["got"], c["got"])) if x != y), min(len(e["got"]), len(c["got"])))
            print(f"full {c['task']} d={c['depth']}: part at char {i}: engine {e['got'][:i + 16]!r} / "
                  f"transformers {c['got'][:i + 16]!r}", file=sys.stderr)
    print(f"full cache against the engine's --kv full: {n} cases, {same_correct} same correctness, "
          f"{same_text} same answer text", file=sys.stderr)
    return {"n_cases": n, "same_correctness": same_correct, "same_text": same_text}


def markdown_table(doc, engine):
    """Correct answers per task of every kvpress policy; with the engine's results (`longctx eval` JSON, or None),
    on the cases both ran: kvpress's and the engine's correct answers under the same method and budget, and how many
    answers are the same text."""
    tasks = doc["tasks"]

    def frac(k, n):
        return f"{k}/{n}" if n else "-"

    eng = {}
    for c in (engine or {}).get("cases", []):
        eng[(c["policy"], c["task"], c["length"], c["depth"], c["seed"])] = c
    head = "| policy | kept | " + " | ".join(f"kvpress {t}" for t in tasks)
    rule = "|---|---:|" + "---:|" * len(tasks)
    if engine:
        head += " | engine spec | cases run by both | kvpress correct | engine correct | same answer text"
        rule += "---|---:|---:|---:|---:|"
    lines = [head + " |", rule]
    for pol in doc["policies"]:
        cs = [c for c in doc["cases"] if c["policy"] == pol]
        if not cs:
            continue
        info = doc["presses"].get(pol)
        spec = "full" if info is None else \
            PRESSES[info["press"]]["engine_spec"].format(F=f"1/{round(1 / (1 - info['compression_ratio']))}")
        kept = sum(c["kept_fraction"] for c in cs) / len(cs)
        row = f"| {pol} | {kept:.3f} | "
        row += " | ".join(frac(sum(c["correct"] for c in cs if c["task"] == t), sum(c["task"] == t for c in cs))
                          for t in tasks)
        if engine:
            pairs = [(c, eng.get((spec, c["task"], c["length"], c["depth"], c["seed"]))) for c in cs]
            pairs = [(c, e) for c, e in pairs if e is not None]
            row += f" | `{spec}` | "
            n = len(pairs)
            row += (f"{n} | {frac(sum(c['correct'] for c, e in pairs), n)} | "
                    f"{frac(sum(e['correct'] for c, e in pairs), n)} | {frac(sum(c['got'] == e['got'] for c, e in pairs), n)}")
        lines.append(row + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompts", help="JSONL of `longctx eval --prompts-out`")
    ap.add_argument("-o", "--out", required=True, help="results JSON")
    ap.add_argument("--presses", default=DEFAULT_PRESSES,
                    help=f"comma-separated, of {','.join(PRESSES)}; 'none': the full cache alone")
    ap.add_argument("--ratios", default=DEFAULT_RATIOS, help="kvpress compression ratios (fraction removed)")
    ap.add_argument("--no-full", action="store_true", help="skip the full-cache baseline")
    ap.add_argument("--model", default="", help="GGUF (default: the prompts file's model)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (more than the idle cores makes its OpenMP threads spin: 20x slower decode)")
    ap.add_argument("--tasks", default="", help="only these tasks (comma-separated)")
    ap.add_argument("--separate", action="store_true",
                    help="one prefill per (prompt, press, ratio) under `with press(model)`, as kvpress documents "
                         "it (slow: the default shares one prefill per prompt, which gives the same caches)")
    ap.add_argument("--engine", default="", help="`longctx eval --kv full` results to compare the full cache with")
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown table of the results file -o (beside --engine's) and stop")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.load(open(args.out)), json.load(open(args.engine)) if args.engine else None))
        return

    prompts = [json.loads(line) for line in open(args.prompts) if line.strip()]
    prompts = [p for p in prompts if p["task"] != "ppl" and (not args.tasks or p["task"] in args.tasks.split(","))]
    if not prompts:
        sys.exit("no question prompts in " + args.prompts)
    presses = [] if args.presses == "none" else [x for x in args.presses.split(",") if x]
    unknown = set(presses) - set(PRESSES)
    if unknown:
        sys.exit(f"unknown presses {sorted(unknown)}; known: {','.join(PRESSES)}")
    ratios = [float(r) for r in args.ratios.split(",") if r]
    if any(not 0 < r < 1 for r in ratios):
        sys.exit("ratios must be in (0, 1)")
    runs = ([] if args.no_full else [(None, 0.0)]) + [(p, r) for p in presses for r in ratios]
    policies = [policy_name(p, r) for p, r in runs]

    import kvpress
    import torch
    import transformers

    model_path = args.model or prompts[0]["model"]
    model, tok = load(model_path, args.threads)
    meta = {
        "model": model_path,
        "reference": {"name": "kvpress", "version": kvpress.__version__ if hasattr(kvpress, "__version__") else
                      __import__("importlib.metadata").metadata.version("kvpress"),
                      "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
                      "dtype": "float32", "device": "cpu", "attn_implementation": "sdpa"},
        "prompts": args.prompts,
        "prompt_style": prompts[0]["prompt_style"],
        "question_after_compress": any(p["n_compressed"] > 0 for p in prompts),
        "tasks": sorted({p["task"] for p in prompts}),
        "policies": policies,
        "presses": {policy_name(p, r): {"press": p, "class": PRESSES[p]["class"], "compression_ratio": r,
                                        "args": PRESSES[p]["args"],
                                        **({"inner": PRESSES[p]["inner"], "inner_args": PRESSES[p]["inner_args"]}
                                           if "inner" in PRESSES[p] else {}),
                                        "engine_spec": PRESSES[p]["engine_spec"].format(F=f"1/{round(1 / (1 - r))}")}
                    for p, r in runs if p is not None},
        "lengths": sorted({p["length"] for p in prompts}),
        "depths": sorted({p["depth"] for p in prompts}),
        "seeds": sorted({p["seed"] for p in prompts}),
        "n_threads": args.threads,
        "prefill": "one per run (--separate)" if args.separate else "one per prompt, shared by every press",
        "generated_by": "scripts/kvpress_answers.py " + " ".join(sys.argv[1:]),
    }
    cases = []
    t_start = time.perf_counter()
    n_runs = len(prompts) * len(runs)
    done = 0
    for p in prompts:
        results = ((run, answer_separate(model, tok, p, *run)) for run in runs) if args.separate else \
            answers_shared(model, tok, p, runs)
        for (press_name, ratio), (got, n_gen, kept, t_pre, t_dec) in results:
            c = {"policy": policy_name(press_name, ratio), "task": p["task"], "length": p["length"],
                 "depth": p["depth"], "depth_placed": p["depth_placed"], "seed": p["seed"], "n_prompt": p["n_tokens"],
                 "n_compressed": p["n_compressed"] or p["n_tokens"], "n_generated": n_gen, "kept_fraction": kept,
                 "expected": p["expected"], "got": got, "correct": score_answer(p["expected"], got),
                 "prefill_seconds": t_pre, "decode_seconds": t_dec}
            cases.append(c)
            done += 1
            el = time.perf_counter() - t_start
            print(f"[{done}/{n_runs} {el:.0f}s, ~{el / done * (n_runs - done):.0f}s left] {p['task']} d={p['depth']} "
                  f"{c['policy']}: kept {kept:.3f} {'OK ' if c['correct'] else 'BAD'} {got[:40]!r}",
                  file=sys.stderr, flush=True)
            doc = {**meta, "cases": cases, "summary": summarize(cases, policies)}
            write_json(args.out, doc)
    if args.engine:
        doc["engine_full_comparison"] = compare_with_engine(cases, args.engine)
        write_json(args.out, doc)
    print("| policy | kept | " + " | ".join(meta["tasks"]) + " |", file=sys.stderr)
    for s in summarize(cases, policies):
        print(f"| {s['policy']} | {s['kept_fraction']:.3f} | " + " | ".join(s["correct"].get(t, "-") for t in meta["tasks"])
              + " |", file=sys.stderr)


if __name__ == "__main__":
    main()
