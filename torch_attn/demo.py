"""The main job: a Llama-shaped causal prefill through torch.ops.attn.prefill on the best
device available, timed, and checked against the float64 reference."""
from __future__ import annotations

import time

import torch

import torch_attn
from torch_attn.reference import prefill_reference

# Llama-3-8B attention: 32 query heads, 8 KV heads, head_dim 128.
NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128


def _time_calls(fn, device: str, repeats: int) -> float:
    """Median seconds per call (CUDA events on GPU, wall clock on CPU)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_demo(device: str | None = None, seq_len: int | None = None) -> int:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    seq_len = seq_len or (4096 if device == "cuda" else 1024)
    dtype = torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(seq_len, NUM_QO_HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    k = torch.randn(seq_len, NUM_KV_HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    v = torch.randn(seq_len, NUM_KV_HEADS, HEAD_DIM, generator=gen).to(device, dtype)

    with torch.inference_mode():
        out = torch_attn.prefill(q, k, v, causal=True)
        seconds = _time_calls(lambda: torch_attn.prefill(q, k, v, causal=True), device, 20 if device == "cuda" else 3)
        ref, _ = prefill_reference(q.cpu(), k.cpu(), v.cpu(), causal=True)
    err = ((out.cpu().double() - ref).norm() / ref.norm()).item()
    flops = 4 * seq_len * seq_len * NUM_QO_HEADS * HEAD_DIM / 2  # causal: half the pairs
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU path"
    print(f"torch_attn demo: causal prefill, {seq_len} tokens, {NUM_QO_HEADS}/{NUM_KV_HEADS} heads (GQA), "
          f"head_dim {HEAD_DIM}, bf16, on {device} ({where})")
    print(f"  time per call   {seconds * 1e3:.3f} ms  ({seq_len / seconds:,.0f} tokens/s, "
          f"{flops / seconds / 1e12:.2f} TFLOP/s)")
    print(f"  error vs float64 reference: ||out - ref|| / ||ref|| = {err:.2e}")
    ok = err < 1e-2 and torch.isfinite(out).all().item()
    print("  OK" if ok else "  FAILED: error above 1e-2 or non-finite output")
    return 0 if ok else 1
