"""Prints the device run's closing table from attention_bench's and torch_sdpa_bench's JSON lines.
Usage: report.py ours.jsonl torch.jsonl [check_status]   (ours.jsonl: attention_bench's and prefill_bench's lines)"""
import json
import sys


def load(path):
    try:
        return [json.loads(line) for line in open(path) if line.strip()]
    except OSError:
        return []


ours, torch_rows = load(sys.argv[1]), load(sys.argv[2])
check = sys.argv[3] if len(sys.argv) > 3 else "?"
copy = next((r["tbps"] for r in ours if r["what"] == "copy"), float("nan"))
read = next((r["tbps"] for r in ours if r["what"] == "read"), float("nan"))
tcopy = next((r["tbps"] for r in torch_rows if r["what"] == "torch_copy"), float("nan"))


def best_torch(backend, ctx):
    rs = [r for r in torch_rows if r.get("what") == "torch" and r.get("backend") == backend and r.get("ctx") == ctx
          and "tbps" in r]
    return max(rs, key=lambda r: r["tbps"]) if rs else None


print()
print(f"ceilings: copy (cudaMemcpy D2D, read+write) {copy:.2f} TB/s; read-only kernel {read:.2f} TB/s; "
      f"torch copy_ {tcopy:.2f} TB/s")
print(f"correctness check: {check}")
print()
print("| decode, B=1, 32/8 heads, d=128 | context | splits | us | TB/s | of copy | "
      "torch cudnn TB/s | torch flash TB/s | torch efficient TB/s | ours / best torch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in ours:
    if r["what"] != "ours":
        continue
    cells = []
    best = 0.0
    for b in ("cudnn", "flash", "efficient"):
        t = best_torch(b, r["ctx"]) if r["dtype"] == "bf16" else None
        if t:
            cells.append(f"{t['tbps']:.2f} ({t['form']})")
            best = max(best, t["tbps"])
        else:
            cells.append("-")
    ratio = f"{r['tbps'] / best:.2f}x" if best else "-"
    print(f"| longctx {r['dtype']} | {r['ctx'] // 1024}K | {r['n_splits']} | {r['us']:.1f} | {r['tbps']:.2f} | "
          f"{r['tbps'] / copy:.2f} | {' | '.join(cells)} | {ratio} |")

kivi = [r for r in ours if r["what"] == "kivi"]
if kivi:
    bf16_us = {r["ctx"]: r["us"] for r in ours if r["what"] == "ours" and r["dtype"] == "bf16"}
    print()
    print("KIVI pages (all packed but each head's last page, bf16): read = bytes actually read (packed pages, the plain "
          "page, positions) / time; effective = bf16-equivalent bytes 2 * n_ctx * 8 * 128 * 2 / time (target: above "
          "copy)")
    print()
    print("| decode, B=1, 32/8 heads, d=128 | context | splits | us | MB read | read TB/s | effective TB/s | "
          "effective / copy | bf16 us | bf16 / kivi time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in kivi:
        b = bf16_us.get(r["ctx"])
        flag = "" if r.get("finite", True) else " (NON-FINITE OUTPUT)"
        bf = f"{b:.1f}" if b else "-"
        ratio = f"{b / r['us']:.2f}x" if b else "-"
        print(f"| longctx {r['dtype']}{flag} | {r['ctx'] // 1024}K | {r['n_splits']} | {r['us']:.1f} | "
              f"{r['bytes'] / 1e6:.1f} | {r['tbps']:.2f} | {r['eff_tbps']:.2f} | {r['eff_tbps'] / copy:.2f} | "
              f"{bf} | {ratio} |")

for r in ours:
    if r["what"] == "scores":
        print(f"attention scores (token policies' votes) over {r['dtype']} pages at {r['ctx'] // 1024}K, "
              f"{r['n_q']} query row(s): {r['us']:.1f} us")

prefill = [r for r in ours if r["what"] == "prefill"]
if prefill:
    print()
    print("| prefill, causal, B=1, d=128, bf16 | kernel | context | heads q/kv | us | TFLOP/s | torch cudnn | torch flash | "
          "torch efficient | ours / cudnn | ours / best torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in prefill:
        cells, best, cudnn = [], 0.0, 0.0
        for b in ("cudnn", "flash", "efficient"):
            t = next((x for x in torch_rows if x.get("what") == "torch_prefill" and x.get("backend") == b and
                      x.get("ctx") == r["ctx"] and x.get("n_head_kv") == r["n_head_kv"] and "tflops" in x), None)
            cells.append(f"{t['tflops']:.1f}" if t else "-")
            if t:
                best = max(best, t["tflops"])
                cudnn = t["tflops"] if b == "cudnn" else cudnn
        print(f"| longctx | {r.get('kernel', '-')} | {r['ctx'] // 1024}K | {r['n_head']}/{r['n_head_kv']} | {r['us']:.0f} | {r['tflops']:.1f} | "
              f"{' | '.join(cells)} | {r['tflops'] / cudnn:.2f}x | {r['tflops'] / best:.2f}x |"
              if cudnn and best else
              f"| longctx | {r.get('kernel', '-')} | {r['ctx'] // 1024}K | {r['n_head']}/{r['n_head_kv']} | {r['us']:.0f} | {r['tflops']:.1f} | "
              f"{' | '.join(cells)} | - | - |")
