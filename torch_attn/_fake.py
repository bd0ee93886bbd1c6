"""Fake (meta) kernels of the attn ops, so torch.compile traces them without running them.

They mirror the shape checks of csrc/prefill_checks.cpp with the same messages
(tests/test_bad_input.py runs every malformed call through both).
"""
from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rank_help(dim: int) -> str:
    return "[tokens, heads, head_dim]" if dim == 3 else "[batch, tokens, heads, head_dim]"


def _check_indptr(name: str, indptr: torch.Tensor, q: torch.Tensor) -> None:
    if indptr.dtype != torch.int32:
        raise TypeError(f"attn.prefill: {name} must be int32, got {indptr.dtype}")
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(f"attn.prefill: {name} must be a 1-D [batch + 1] tensor, got shape {list(indptr.shape)}")
    if indptr.device != q.device:
        raise ValueError(f"attn.prefill: {name} must be on q's device")
    if indptr.stride(0) != 1:
        raise ValueError(f"attn.prefill: {name} must be contiguous")


def check_mask_args(head_dim, sm_scale, window_left, logits_soft_cap) -> None:
    if window_left < -1:
        raise ValueError(f"attn.prefill: window_left must be -1 (no window) or >= 0, got {window_left}")
    if not (math.isfinite(logits_soft_cap) and logits_soft_cap >= 0):
        raise ValueError(f"attn.prefill: logits_soft_cap must be >= 0 (0 disables it), got {logits_soft_cap}")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"attn.prefill: sm_scale must be a positive finite number, got {scale}")


def check_cuda_dtype(q) -> None:
    if q.device.type == "cuda" and q.dtype == torch.float32:
        raise TypeError("attn.prefill: on CUDA, q, k and v must be float16 or bfloat16 (float32 runs on CPU only)")


def check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, logits_soft_cap) -> None:
    if q.dim() not in (3, 4):
        raise ValueError("attn.prefill: q must be 3-D [tokens, heads, head_dim] or 4-D [batch, tokens, heads, "
                         f"head_dim], got {q.dim()}-D")
    for name, t in (("k", k), ("v", v)):
        if t.dim() != q.dim():
            raise ValueError(f"attn.prefill: {name} must be {q.dim()}-D {_rank_help(q.dim())} like q, got {t.dim()}-D")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"attn.prefill: q must be float16, bfloat16 or float32, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"attn.prefill: {name} must have q's dtype")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"attn.prefill: {name} must be on q's device")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"attn.prefill: {name} must have a contiguous last dimension (stride 1)")
    head_dim = q.shape[-1]
    if head_dim % 8 != 0 or not 8 <= head_dim <= 256:
        raise ValueError(f"attn.prefill: head_dim (q.size(-1)) must be a multiple of 8 from 8 to 256, got {head_dim}")
    for name, t in (("k", k), ("v", v)):
        if t.shape[-1] != head_dim:
            raise ValueError(f"attn.prefill: {name}'s head_dim must equal q's")
    num_qo_heads, num_kv_heads = q.shape[-2], k.shape[-2]
    if num_qo_heads < 1 or num_kv_heads < 1:
        raise ValueError("attn.prefill: q and k need at least one head")
    if v.shape[-2] != num_kv_heads:
        raise ValueError("attn.prefill: v must have k's number of heads")
    if num_qo_heads % num_kv_heads != 0:
        raise ValueError(f"attn.prefill: q's heads ({num_qo_heads}) must be a multiple of k's heads ({num_kv_heads})")
    torch._check(v.shape[-3] == k.shape[-3], lambda: "attn.prefill: v must have k's number of tokens")
    check_mask_args(head_dim, sm_scale, window_left, logits_soft_cap)
    if (qo_indptr is None) != (kv_indptr is None):
        raise ValueError("attn.prefill: qo_indptr and kv_indptr must be given together (a ragged batch) or both be None")
    if qo_indptr is not None:
        if q.dim() != 3:
            raise ValueError("attn.prefill: with qo_indptr/kv_indptr (a ragged batch), q, k and v must be 3-D "
                             f"[total_tokens, heads, head_dim], got {q.dim()}-D q")
        _check_indptr("qo_indptr", qo_indptr, q)
        _check_indptr("kv_indptr", kv_indptr, q)
        if kv_indptr.numel() != qo_indptr.numel():
            raise ValueError("attn.prefill: kv_indptr must have qo_indptr's length")
    elif q.dim() == 4:
        torch._check(k.shape[0] == q.shape[0] and v.shape[0] == q.shape[0],
                     lambda: "attn.prefill: k and v must have q's batch size")


@torch.library.register_fake("attn::prefill")
def _prefill_fake(q, k, v, qo_indptr=None, kv_indptr=None, *, causal=False, sm_scale=None, window_left=-1,
                  logits_soft_cap=0.0):
    check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, logits_soft_cap)
    check_cuda_dtype(q)
    out = q.new_empty(q.shape)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return out, lse


def check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale, window_left,
                             logits_soft_cap) -> None:
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f'attn.prefill_paged: kv_layout must be "NHD" or "HND", got "{kv_layout}"')
    if q.dim() != 3:
        raise ValueError(f"attn.prefill_paged: q must be 3-D [total_tokens, heads, head_dim], got {q.dim()}-D")
    if k_cache.dim() != 4:
        raise ValueError(f"attn.prefill_paged: k_cache must be 4-D [pages, page_size, heads, head_dim], got "
                         f"{k_cache.dim()}-D")
    if v_cache.shape != k_cache.shape:
        raise ValueError("attn.prefill_paged: v_cache must have k_cache's shape")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"attn.prefill_paged: q must be float16, bfloat16 or float32, got {q.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"attn.prefill_paged: {name} must have q's dtype")
        if t.device != q.device:
            raise ValueError(f"attn.prefill_paged: {name} must be on q's device")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"attn.prefill_paged: {name} must have a contiguous last dimension (stride 1)")
    hnd = kv_layout == "HND"
    num_kv_heads, head_dim = k_cache.shape[1 if hnd else 2], q.shape[-1]
    if head_dim % 8 != 0 or not 8 <= head_dim <= 256:
        raise ValueError(f"attn.prefill_paged: head_dim (q.size(-1)) must be a multiple of 8 from 8 to 256, got "
                         f"{head_dim}")
    if k_cache.shape[3] != head_dim:
        raise ValueError("attn.prefill_paged: k_cache's head_dim must equal q's")
    if k_cache.shape[0] < 1 or k_cache.shape[2 if hnd else 1] < 1 or num_kv_heads < 1:
        raise ValueError("attn.prefill_paged: k_cache needs at least one page, page_size >= 1 and one head")
    if q.shape[1] < 1 or q.shape[1] % num_kv_heads != 0:
        raise ValueError(f"attn.prefill_paged: q's heads ({q.shape[1]}) must be a multiple of the cache's heads "
                         f"({num_kv_heads})")
    for name, t, dim in (("qo_indptr", qo_indptr, 1), ("block_table", block_table, 2), ("kv_lens", kv_lens, 1)):
        if t.dtype != torch.int32:
            raise TypeError(f"attn.prefill_paged: {name} must be int32, got {t.dtype}")
        if t.dim() != dim:
            raise ValueError(f"attn.prefill_paged: {name} must be {dim}-D, got shape {list(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"attn.prefill_paged: {name} must be on q's device")
        if t.stride(-1) != 1:
            raise ValueError(f"attn.prefill_paged: {name} must have a contiguous last dimension")
    num_seqs = qo_indptr.shape[0] - 1
    if num_seqs < 0:
        raise ValueError("attn.prefill_paged: qo_indptr must have batch + 1 entries, got none")
    if block_table.shape[0] != num_seqs:
        raise ValueError("attn.prefill_paged: block_table must have one row per sequence")
    if kv_lens.shape[0] != num_seqs:
        raise ValueError("attn.prefill_paged: kv_lens must have one entry per sequence")
    check_mask_args(head_dim, sm_scale, window_left, logits_soft_cap)


@torch.library.register_fake("attn::prefill_paged")
def _prefill_paged_fake(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, *, kv_layout="NHD", causal=False,
                        sm_scale=None, window_left=-1, logits_soft_cap=0.0):
    check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale, window_left,
                             logits_soft_cap)
    check_cuda_dtype(q)
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("attn::merge_states")
def _merge_states_fake(out_a, lse_a, out_b, lse_b):
    if out_a.dim() < 2:
        raise ValueError(f"attn.merge_states: out_a must be [..., heads, head_dim], got {out_a.dim()}-D")
    if out_b.shape != out_a.shape:
        raise ValueError("attn.merge_states: out_b must have out_a's shape")
    if not out_a.is_floating_point() or out_b.dtype != out_a.dtype:
        raise TypeError("attn.merge_states: out_a and out_b must share one floating dtype")
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if t.shape != out_a.shape[:-1]:
            raise ValueError(f"attn.merge_states: {name} must be out's shape without head_dim")
        if t.dtype != torch.float32:
            raise TypeError(f"attn.merge_states: {name} must be float32, got {t.dtype}")
    for name, t in (("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        if t.device != out_a.device:
            raise ValueError(f"attn.merge_states: {name} must be on out_a's device")
    return out_a.new_empty(out_a.shape), lse_a.new_empty(lse_a.shape)
