"""A small grid for compute-sanitizer (memcheck, racecheck): every head-dim tile,
both dtypes, masks, a ragged batch with empty sequences and poisoned tails.
Run: compute-sanitizer --tool memcheck python tests/sanitize_prefill.py"""
import math

import torch

import torch_attn


def main() -> None:
    torch.manual_seed(0)
    for head_dim in (64, 80, 128, 192, 256):
        for dtype in (torch.bfloat16, torch.float16):
            q = torch.randn(77, 4, head_dim, dtype=dtype, device="cuda")
            k = torch.randn(131, 2, head_dim, dtype=dtype, device="cuda")
            v = torch.randn(131, 2, head_dim, dtype=dtype, device="cuda")
            torch_attn.prefill(q, k, v, causal=True, window_left=50)
            torch_attn.prefill(q, k, v, logits_soft_cap=30.0)
    # Ragged, with empty sequences and K/V tails that run into poisoned memory.
    lens = [5, 0, 130, 64, 1]
    total = sum(lens)
    indptr = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(total, 8, 128, dtype=torch.bfloat16, device="cuda")
    kv = torch.full((total + 64, 2, 2, 128), math.nan, dtype=torch.bfloat16, device="cuda")
    kv[:total] = torch.randn(total, 2, 2, 128, device="cuda")
    out = torch_attn.prefill(q, kv[:total, 0], kv[:total, 1], causal=True, qo_indptr=indptr, kv_indptr=indptr)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    print("sanitize grid done")


if __name__ == "__main__":
    main()
