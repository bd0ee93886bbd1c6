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
    if window_left < -1:
        raise ValueError(f"attn.prefill: window_left must be -1 (no window) or >= 0, got {window_left}")
    if not (math.isfinite(logits_soft_cap) and logits_soft_cap >= 0):
        raise ValueError(f"attn.prefill: logits_soft_cap must be >= 0 (0 disables it), got {logits_soft_cap}")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"attn.prefill: sm_scale must be a positive finite number, got {scale}")
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
    if q.device.type == "cuda" and q.dtype == torch.float32:
        raise TypeError("attn.prefill: on CUDA, q, k and v must be float16 or bfloat16 (float32 runs on CPU only)")
    out = q.new_empty(q.shape)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return out, lse
