"""torch SDPA decode on the shapes of tests/cuda/attention_bench.cu, in the same call, timed the same way.

B = 1, 32 query / 8 kv heads, d = 128, bf16, contexts 4K/32K/128K; backends cuDNN, flash and memory-efficient,
each in two forms: enable_gqa=True (q (1, 32, 1, d) against k, v (1, 8, S, d)), and "packed" (the 4 query heads of a
kv-head as 4 query rows, q (1, 8, 4, d), not causal: the same function for decode, and the form FlashAttention's
decode path uses). Median of CUDA-graph replays of many steps over enough K/V copies to miss L2; bytes = K + V.

Prefill (the shapes of tests/cuda/prefill_bench.cu): B = 1, 32 query heads against 32 or 8 kv heads, d = 128, bf16,
causal, 4K/16K/32K tokens, q, k, v (1, heads, n, d); FLOPs 4 n^2 d heads / 2, as FlashAttention counts them.
Usage: torch_sdpa_bench.py out.jsonl [decode] [prefill]   (both when neither is named)
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D = 32, 8, 128
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def time_graph(fn, steps, reps=9):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(steps):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3 / steps)
    return sorted(ts)[len(ts) // 2]


def time_plain(fn, steps, reps=9):
    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for i in range(steps):
            fn(i)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3 / steps)
    return sorted(ts)[len(ts) // 2]


def main():
    out = open(sys.argv[1], "w") if len(sys.argv) > 1 else None
    modes = set(sys.argv[2:]) or {"decode", "prefill"}

    def record(**kw):
        print(json.dumps(kw), flush=True)
        if out:
            out.write(json.dumps(kw) + "\n")
            out.flush()

    dev = torch.cuda.get_device_properties(0)
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {dev.name}", flush=True)
    l2 = getattr(dev, "L2_cache_size", 50 << 20)

    n = 1 << 28  # 512 MiB of bf16
    a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    us = time_graph(lambda i: b.copy_(a), 10, 7)
    record(what="torch_copy", us=us, tbps=2 * a.numel() * 2 / (us * 1e-6) / 1e12)
    del a, b

    if "prefill" in modes:
        prefill(record)
    if "decode" not in modes:
        return
    for ctx in (4096, 32768, 131072):
        kv_bytes = 2 * ctx * HKV * D * 2
        n_copies = max(1, math.ceil(3 * l2 / kv_bytes))
        ks = [torch.randn(1, HKV, ctx, D, device="cuda", dtype=torch.bfloat16) for _ in range(n_copies)]
        vs = [torch.randn(1, HKV, ctx, D, device="cuda", dtype=torch.bfloat16) for _ in range(n_copies)]
        q = torch.randn(1, H, 1, D, device="cuda", dtype=torch.bfloat16)
        q_packed = q.view(1, HKV, H // HKV, D)
        steps = max(20, n_copies * math.ceil(20 / n_copies))
        # The check: both forms against a float32 reference of the same function.
        ref = torch.softmax((q.float().view(1, HKV, H // HKV, D) @ ks[0].float().transpose(-1, -2)) / math.sqrt(D),
                            dim=-1) @ vs[0].float()
        for bname, backend in BACKENDS.items():
            for form in ("gqa", "packed"):
                if form == "gqa":
                    fn = lambda i: F.scaled_dot_product_attention(q, ks[i % n_copies], vs[i % n_copies], enable_gqa=True)
                else:
                    fn = lambda i: F.scaled_dot_product_attention(q_packed, ks[i % n_copies], vs[i % n_copies])
                try:
                    with sdpa_kernel([backend]):
                        o = fn(0).float().reshape(ref.shape)
                        err = ((o - ref).norm() / ref.norm()).item()
                        try:
                            us, timing = time_graph(fn, steps), "graph"
                        except Exception:  # a backend that cannot be captured is timed by plain launches
                            torch.cuda.synchronize()
                            us, timing = time_plain(fn, steps), "plain"
                    record(what="torch", backend=bname, form=form, ctx=ctx, us=us, timing=timing,
                           tbps=kv_bytes / (us * 1e-6) / 1e12, rel_err=err)
                except Exception as e:  # a backend that refuses a shape is reported, not fatal
                    record(what="torch", backend=bname, form=form, ctx=ctx, error=str(e).splitlines()[0][:160])
        del ks, vs
        torch.cuda.empty_cache()


def prefill(record):
    for hkv in (32, 8):
        for n in (4096, 16384, 32768):
            q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(1, hkv, n, D, device="cuda", dtype=torch.bfloat16)
            flops = 4 * n * n * D * H / 2
            for bname, backend in BACKENDS.items():
                fn = lambda i: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != H)
                try:
                    with sdpa_kernel([backend]):
                        us = time_plain(fn, 2 if n >= 16384 else 8, 5)
                    record(what="torch_prefill", backend=bname, ctx=n, n_head=H, n_head_kv=hkv, us=us,
                           tflops=flops / (us * 1e-6) / 1e12)
                except Exception as e:  # a backend that refuses a shape is reported, not fatal
                    torch.cuda.synchronize()
                    record(what="torch_prefill", backend=bname, ctx=n, n_head=H, n_head_kv=hkv,
                           error=str(e).splitlines()[0][:160])
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
