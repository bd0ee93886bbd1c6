"""fp8 inputs against bf16 on our own kernels, one run, one card (bench_prefill's method: CUDA events,
the implementations taking turns call by call, median; TFLOP/s over visible pairs).

Rows: "bf16" (the kernel the op picks: wgmma on Hopper), "bf16 sm80" (the mma.sync kernel, which
runs every fp8 call today), "fp8 kv" (bf16 q, e4m3 k/v with per-head scales: the serving case) and
"fp8 qkv" (e4m3 q, k and v, bf16 out). Paper-grid points and ANCHORS.md's paged serving batches.

    python benchmarks/bench_fp8.py [--repeats N]
"""
from __future__ import annotations

import argparse

import torch

import torch_attn
from bench_prefill import OURS, Case, indptr_of, interleaved_median_ms, make_paged_cache, paper_grid, serving_cases

E4M3 = torch.float8_e4m3fn


def per_head_fp8(t: torch.Tensor):
    """t [.., heads, D] -> e4m3 codes and per-head descale factors."""
    dims = tuple(d for d in range(t.dim()) if d != t.dim() - 2)
    scale = t.abs().amax(dim=dims).float() / torch.finfo(E4M3).max
    return (t.float() / scale.view(-1, 1)).to(E4M3), scale


def calls_of(case: Case) -> dict:
    """The four rows' calls for a case (ragged, or paged when the case has pages)."""
    gen_q = torch.randn(sum(case.qo_lens), case.num_qo_heads, case.head_dim, device="cuda", dtype=torch.bfloat16)
    q8, q_scale = per_head_fp8(gen_q)
    qo_indptr = indptr_of(case.qo_lens)
    kwargs = dict(causal=case.causal)
    if case.page_size:
        k_cache, v_cache, block_table, kv_lens, _ = make_paged_cache(case)
        (k8, k_scale), (v8, v_scale) = per_head_fp8(k_cache), per_head_fp8(v_cache)
        kwargs.update(kv_layout=case.kv_layout)
        def run(q, k, v, **extra):
            return lambda: torch_attn.prefill_paged(q, k, v, qo_indptr, block_table, kv_lens, **kwargs, **extra)
    else:
        k = torch.randn(sum(case.kv_lens), case.num_kv_heads, case.head_dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        k_cache, v_cache = k, v
        (k8, k_scale), (v8, v_scale) = per_head_fp8(k), per_head_fp8(v)
        kv_indptr = indptr_of(case.kv_lens)
        def run(q, k, v, **extra):
            return lambda: torch_attn.prefill(q, k, v, qo_indptr=qo_indptr, kv_indptr=kv_indptr, **kwargs, **extra)
    return {"bf16": run(gen_q, k_cache, v_cache), "bf16 sm80": run(gen_q, k_cache, v_cache),
            "fp8 kv": run(gen_q, k8, v8, k_scale=k_scale, v_scale=v_scale),
            "fp8 qkv": run(q8, k8, v8, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)}


def timed(calls: dict, repeats: int) -> dict:
    """interleaved_median_ms, "bf16 sm80" forced onto the mma.sync kernel through bench_prefill's
    naming (OURS + backend), the others on auto."""
    named = {(OURS + "sm80" if name.endswith("sm80") else name): fn for name, fn in calls.items()}
    interleaved_median_ms(named, 3)
    ms = interleaved_median_ms(named, repeats)
    return {name.replace(OURS + "sm80", "bf16 sm80"): t for name, t in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    grid = [c for c in paper_grid() if c.head_dim in (64, 128, 256) and c.qo_lens[0] in (1024, 4096, 16384)]
    serving = [c for c in serving_cases() if not c.latency and not c.dense]
    for c in serving:
        c.page_size = 16
        c.name = "paged p16: " + c.name
    print(f"{torch.cuda.get_device_name()}: TFLOP/s (median of {args.repeats}); fp8 kv / fp8 qkv relative to bf16")
    print("| case | bf16 | bf16 sm80 | fp8 kv | fp8 qkv | fp8 kv / bf16 | fp8 qkv / bf16 |")
    print("|---|---|---|---|---|---|---|")
    for case in grid + serving:
        ms = timed(calls_of(case), args.repeats)
        tflops = {name: case.flops / (t * 1e-3) / 1e12 for name, t in ms.items()}
        print(f"| {case.name} | " + " | ".join(f"{tflops[n]:.0f}" for n in ("bf16", "bf16 sm80", "fp8 kv", "fp8 qkv")) +
              f" | {tflops['fp8 kv'] / tflops['bf16']:.2f} | {tflops['fp8 qkv'] / tflops['bf16']:.2f} |", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
