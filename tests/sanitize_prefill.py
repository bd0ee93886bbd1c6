"""A small grid for compute-sanitizer (memcheck, racecheck): every head-dim tile,
both dtypes (and fp8 inputs), masks, logits whose max moves on every key tile, claimed and split work
items, a ragged batch with empty sequences
and poisoned tails, paged caches. Run: compute-sanitizer --tool memcheck python tests/sanitize_prefill.py
(TORCH_ATTN_BACKEND=sm80 / sm90 picks the kernel)."""
import math
import os

import torch

import torch_attn


def main() -> None:
    torch.manual_seed(0)
    for head_dim in (64, 80, 128, 192, 256, 392, 512):
        for dtype in (torch.bfloat16, torch.float16):
            q = torch.randn(77, 4, head_dim, dtype=dtype, device="cuda")
            k = torch.randn(131, 2, head_dim, dtype=dtype, device="cuda")
            v = torch.randn(131, 2, head_dim, dtype=dtype, device="cuda")
            torch_attn.prefill(q, k, v, causal=True, window_left=50)
            torch_attn.prefill(q, k, v, logits_soft_cap=30.0)
    # Logits that rise key tile by key tile (by ~26 per 128 keys): the wgmma kernel's tile steps
    # find weights too large at the rows' current max and compute S once more.
    for head_dim in (64, 128):
        rise = (0.2 * torch.arange(300, device="cuda"))[:, None, None] / math.sqrt(head_dim)
        q = torch.ones(200, 4, head_dim, dtype=torch.bfloat16, device="cuda")
        k = (rise + 0.1 * torch.randn(300, 2, head_dim, device="cuda")).to(torch.bfloat16)
        torch_attn.prefill(q, k, k, causal=True)
    # More query tiles x heads (8 x 24) than SMs: the wgmma kernel's CTAs claim items from a counter.
    q = torch.randn(1000, 24, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1000, 8, 128, dtype=torch.bfloat16, device="cuda")
    torch_attn.prefill(q, k, k, causal=True)
    # 140 items of equal cost on 132 SMs (H100/H200): the last round's 8 items run as pieces of their
    # 40 K/V tiles, whose out and lse meet in a global workspace (the tail split); then 8 items, all in pieces.
    q = torch.randn(35, 100, 4, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(35, 5000, 2, 128, dtype=torch.bfloat16, device="cuda")
    torch_attn.prefill(q, k, k)
    torch_attn.prefill(q[:2], k[:2], k[:2])
    # Ragged, with empty sequences and K/V tails that run into poisoned memory.
    lens = [5, 0, 130, 64, 1]
    total = sum(lens)
    indptr = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(total, 8, 128, dtype=torch.bfloat16, device="cuda")
    kv = torch.full((total + 64, 2, 2, 128), math.nan, dtype=torch.bfloat16, device="cuda")
    kv[:total] = torch.randn(total, 2, 2, 128, device="cuda")
    out = torch_attn.prefill(q, kv[:total, 0], kv[:total, 1], causal=True, qo_indptr=indptr, kv_indptr=indptr)
    # Paged caches: random values in every slot (unused ones too), pages of 16 (NHD), 8 and 1 (HND; the
    # wgmma kernel takes no pages of 1), a partly filled last page.
    pages_of = [(16, "NHD"), (8, "HND")] + ([] if os.environ.get("TORCH_ATTN_BACKEND") == "sm90" else [(1, "HND")])
    for page_size, layout in pages_of:
        kv_lens = [37, 0, 130]
        pages = [(n + page_size - 1) // page_size for n in kv_lens]
        shape = (sum(pages) + 2, page_size, 2, 128) if layout == "NHD" else (sum(pages) + 2, 2, page_size, 128)
        cache = torch.randn(2, *shape, dtype=torch.bfloat16, device="cuda")
        table = torch.zeros(3, max(pages), dtype=torch.int32, device="cuda")
        order = torch.randperm(sum(pages) + 2, device="cuda").to(torch.int32)
        start = 0
        for b, n in enumerate(pages):
            table[b, :n] = order[start:start + n]
            start += n
        qo = torch.tensor([0, 20, 20, 150], dtype=torch.int32, device="cuda")
        lens = torch.tensor(kv_lens, dtype=torch.int32, device="cuda")
        q = torch.randn(150, 8, 128, dtype=torch.bfloat16, device="cuda")
        paged = torch_attn.prefill_paged(q, cache[0], cache[1], qo, table, lens, kv_layout=layout, causal=True)
        assert torch.isfinite(paged).all()
        if os.environ.get("TORCH_ATTN_BACKEND") != "sm90":  # fp8 runs on the mma.sync kernel only
            codes = cache.to(torch.float8_e5m2)
            scale = torch.rand(2, device="cuda") + 0.5
            paged = torch_attn.prefill_paged(q, codes[0], codes[1], qo, table, lens, kv_layout=layout, causal=True,
                                             k_scale=scale, v_scale=scale[0])
            assert torch.isfinite(paged).all()
    # fp8 q, k and v at every tile width (the q tile converted on load, the K/V rings' codes converted per tile).
    if os.environ.get("TORCH_ATTN_BACKEND") != "sm90":
        for head_dim in (64, 96, 128, 192, 256, 512):
            q, k, v = (torch.randn(n, h, head_dim, device="cuda").to(torch.float8_e4m3fn)
                       for n, h in ((77, 4), (131, 2), (131, 2)))
            assert torch.isfinite(torch_attn.prefill(q, k, v, causal=True, out_dtype=torch.float16)).all()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    print("sanitize grid done")


if __name__ == "__main__":
    main()
