"""Malformed calls of every attn op: one table for the real op on CPU, the fake kernels
(torch.compile) and the real op on the GPU, each case in a process of its own there
(tests/test_bad_input.py, tests/test_bad_input_cuda.py).

A `Bad` case must raise `exc` with a message containing `names` (the words that name the
argument) before the op touches anything. A `Clamped` case is well-formed in shape but
carries bad values in device tensors: the CPU path reads them and raises; CUDA cannot
without a host sync, so its kernels clamp them into bounds, and the call must finish
without reading out of bounds (compute-sanitizer memcheck runs them:
tests/sanitize_malformed.py).

Run as a script, it runs one case on a device and prints one JSON line (the GPU suite's
subprocesses): `python tests/malformed_calls.py CASE_ID cuda`.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

BF16 = torch.bfloat16


def qkv(dev, sq=8, skv=8, hq=4, hkv=2, d=64, dtype=BF16, batch=None, dv=None):
    lead = () if batch is None else (batch,)
    dv = d if dv is None else dv
    return (torch.randn(*lead, sq, hq, d, device=dev).to(dtype), torch.randn(*lead, skv, hkv, d, device=dev).to(dtype),
            torch.randn(*lead, skv, hkv, dv, device=dev).to(dtype))


E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def fp8(tensors, q=None, kv=E4M3):
    """q, k, v with k and v (and q, given a dtype) as fp8 codes."""
    tq, tk, tv = tensors
    return (tq if q is None else tq.to(q)), tk.to(kv), tv.to(kv)


def scale(dev, *shape):
    return torch.full(shape, 0.5, device=dev)


def ints(dev, *values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype).to(dev)  # (made on the CPU: fake modes convert it)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values in a view that starts 2 bytes past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    return view


def expanded(shape, dev, dtype=BF16):
    """A tensor of `shape` on one element per row of memory: sizes at the int32 limits."""
    return torch.zeros((1,) * (len(shape) - 1) + shape[-1:], dtype=dtype, device=dev).expand(*shape)


# ---- prefill: q [8, 4, 64], k/v [8, 2, 64]; a ragged batch of 2 sequences ----

def prefill(dev, q=None, k=None, v=None, qo_indptr=None, kv_indptr=None, **kwargs):
    base_q, base_k, base_v = qkv(dev)
    args = (base_q if q is None else q, base_k if k is None else k, base_v if v is None else v, qo_indptr, kv_indptr)
    return "prefill", args, kwargs


def ragged(dev, qo=(0, 3, 8), kv=(0, 5, 8), **kwargs):
    return prefill(dev, qo_indptr=qo if isinstance(qo, torch.Tensor) else ints(dev, *qo),
                   kv_indptr=kv if isinstance(kv, torch.Tensor) else ints(dev, *kv), **kwargs)


# ---- prefill_paged: q [12, 4, 64], caches of 6 pages of 8 slots, 2 KV heads; 2 sequences ----

def paged(dev, q=None, k_cache=None, v_cache=None, qo_indptr=None, block_table=None, kv_lens=None, layout="NHD",
          fp8_cache=None, **kwargs):
    cache = torch.randn((6, 2, 8, 2, 64) if layout == "NHD" else (6, 2, 2, 8, 64), device=dev).to(fp8_cache or BF16)
    if layout != "NHD":
        kwargs["kv_layout"] = layout
    args = (torch.randn(12, 4, 64, device=dev).to(BF16) if q is None else q,
            cache[:, 0] if k_cache is None else k_cache, cache[:, 1] if v_cache is None else v_cache,
            ints(dev, 0, 5, 12) if qo_indptr is None else qo_indptr,
            ints(dev, 3, 1, 0, 0, 4, 2).view(2, 3) if block_table is None else block_table,
            ints(dev, 9, 20) if kv_lens is None else kv_lens)
    return "prefill_paged", args, kwargs


# ---- the out= overloads: the calls above with their buffers (q [8, 4, 64] / [12, 4, 64]) ----

def prefill_out(dev, out=None, lse=None, rows=8, **kwargs):
    _, args, kwargs = prefill(dev, **kwargs)
    out = torch.empty(rows, 4, 64, device=dev, dtype=BF16) if out is None else out
    return "prefill.out", args, {**kwargs, "out": out, "lse": lse}


def paged_out(dev, out=None, lse=None, **kwargs):
    _, args, kwargs = paged(dev, **kwargs)
    out = torch.empty(12, 4, 64, device=dev, dtype=BF16) if out is None else out
    return "prefill_paged.out", args, {**kwargs, "out": out, "lse": lse}


def out_sharing_lse(dev):
    """out [8, 4, 64] bf16 and lse [8, 4] float32 over the same bytes."""
    buf = torch.empty(8 * 4 * 64, device=dev, dtype=BF16)
    return prefill_out(dev, out=buf.view(8, 4, 64), lse=buf.view(torch.float32)[:32].view(8, 4))


def out_is_q(dev):
    q = qkv(dev)[0]
    return prefill_out(dev, q=q, out=q)


# ---- merge_states: out [5, 4, 64], lse [5, 4] ----

def merge(dev, out_a=None, lse_a=None, out_b=None, lse_b=None):
    out, lse = torch.randn(5, 4, 64, device=dev).to(BF16), torch.randn(5, 4, device=dev)
    return "merge_states", (out if out_a is None else out_a, lse if lse_a is None else lse_a,
                            out.clone() if out_b is None else out_b, lse.clone() if lse_b is None else lse_b), {}


def other_device(dev):
    """A device that is not `dev` for tensors that must share q's: the CPU for CUDA, meta for CPU."""
    return "cpu" if dev.startswith("cuda") else "meta"


def grad(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


@dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[str], tuple[str, tuple, dict]]
    exc: type
    names: str  # the words of the message that name the argument
    devices: tuple[str, ...] = ("cpu", "cuda")  # where the call is malformed
    needs_gpus: int = 0  # for CUDA: GPUs the case needs (a second device)
    # Whether the fake kernel can see it: a bound that depends on the kernel's tile (picked
    # per call on the device) is checked at run time only, and fake tensors have no addresses
    # (buffers that share memory).
    fake_sees_it: bool = True


@dataclass(frozen=True)
class Clamped:
    id: str
    build: Callable[[str], tuple[str, tuple, dict]]
    cpu_names: str  # what the CPU path's ValueError says
    kwargs_variants: tuple[dict, ...] = field(default_factory=lambda: ({},))


V, T, R = ValueError, TypeError, RuntimeError
CUDA_ONLY = ("cuda",)

BAD: list[Bad] = [
    # ranks
    Bad("q_rank_2", lambda d: prefill(d, *(t[0] for t in qkv(d))), V, "q must be 3-D"),
    Bad("q_rank_5", lambda d: prefill(d, *(t[None, None] for t in qkv(d))), V, "q must be 3-D"),
    Bad("k_rank_mismatch", lambda d: prefill(d, k=qkv(d)[1][None]), V, "k must be 3-D"),
    Bad("v_rank_mismatch", lambda d: prefill(d, v=qkv(d)[2][None]), V, "v must be 3-D"),
    # dtypes
    Bad("int32_inputs", lambda d: prefill(d, *(t.to(torch.int32) for t in qkv(d))), T, "q must be float16, bfloat16"),
    Bad("float64_inputs", lambda d: prefill(d, *(t.double() for t in qkv(d))), T, "q must be float16, bfloat16"),
    Bad("bool_inputs", lambda d: prefill(d, *(t > 0 for t in qkv(d))), T, "q must be float16, bfloat16"),
    Bad("k_dtype_mismatch", lambda d: prefill(d, k=qkv(d)[1].half()), T, "k must have q's dtype"),
    Bad("v_dtype_mismatch", lambda d: prefill(d, v=qkv(d)[2].float()), T, "v must have k's dtype"),
    # fp8 (an fp8 KV cache, or fp8 q, k and v) and its descale factors
    Bad("fp8_q_with_bf16_kv", lambda d: prefill(d, q=qkv(d)[0].to(E4M3)), T, "k must be float8_e4m3fn or float8_e5m2"),
    Bad("fp8_k_with_bf16_v", lambda d: prefill(d, k=qkv(d)[1].to(E4M3)), T, "v must have k's dtype"),
    Bad("fp8_k_e4m3_v_e5m2", lambda d: prefill(d, *fp8(qkv(d), kv=E4M3)[:2], qkv(d)[2].to(E5M2)), T,
        "v must have k's dtype"),
    Bad("out_dtype_for_bf16_q", lambda d: prefill(d, out_dtype=torch.float16), T, "out_dtype must be None or q's"),
    Bad("out_dtype_float32_for_fp8_q", lambda d: prefill(d, *fp8(qkv(d), q=E4M3), out_dtype=torch.float32), T,
        "out_dtype must be torch.bfloat16 or torch.float16"),
    Bad("k_scale_without_fp8_k", lambda d: prefill(d, k_scale=scale(d)), V, "k_scale descales fp8 k, but k is"),
    Bad("q_scale_without_fp8_q", lambda d: prefill(d, *fp8(qkv(d)), q_scale=scale(d)), V,
        "q_scale descales fp8 q, but q is"),
    Bad("k_scale_float64", lambda d: prefill(d, *fp8(qkv(d)), k_scale=scale(d).double()), T,
        "k_scale must be float32"),
    Bad("v_scale_wrong_heads", lambda d: prefill(d, *fp8(qkv(d)), v_scale=scale(d, 4)), V,
        "v_scale must be [] or [1] (one factor) or [2]"),
    Bad("q_scale_2d", lambda d: prefill(d, *fp8(qkv(d), q=E4M3), q_scale=scale(d, 1, 4)), V,
        "q_scale must be [] or [1] (one factor) or [4]"),
    Bad("k_scale_other_device", lambda d: prefill(d, *fp8(qkv(d)), k_scale=scale(other_device(d))), V,
        "k_scale must be on q's device"),
    Bad("fp8_head_dim_72_on_cuda", lambda d: prefill(d, *fp8(qkv(d, d=72))), V,
        "fp8 inputs need head dims that are multiples of 16", CUDA_ONLY),
    Bad("fp8_k_head_stride_not_16_bytes",
        lambda d: prefill(d, *fp8(qkv(d))[:2], torch.randn(8, 2, 72, device=d).to(E4M3)[..., :64]), V,
        "v must start 16-byte aligned", CUDA_ONLY),
    Bad("float32_on_cuda", lambda d: prefill(d, *(t.float() for t in qkv(d))), T, "on CUDA, q, k and v must be",
        CUDA_ONLY),
    # devices
    Bad("k_other_device", lambda d: prefill(d, k=qkv(d)[1].to(other_device(d))), V, "k must be on q's device"),
    Bad("v_other_device", lambda d: prefill(d, v=qkv(d)[2].to(other_device(d))), V, "v must be on q's device"),
    Bad("k_on_second_gpu", lambda d: prefill(d, k=qkv(d)[1].to("cuda:1")), V, "k must be on q's device", CUDA_ONLY,
        needs_gpus=2),
    # layouts
    Bad("q_last_dim_strided", lambda d: prefill(d, q=qkv(d, d=128)[0][..., ::2]), V,
        "q must have a contiguous last dimension"),
    Bad("k_last_dim_strided", lambda d: prefill(d, k=qkv(d, d=128)[1][..., ::2]), V,
        "k must have a contiguous last dimension"),
    Bad("v_last_dim_strided", lambda d: prefill(d, v=qkv(d, d=128)[2][..., ::2]), V,
        "v must have a contiguous last dimension"),
    Bad("q_misaligned_start", lambda d: prefill(d, q=misaligned(qkv(d)[0])), V, "q must start 16-byte aligned",
        CUDA_ONLY),
    Bad("v_misaligned_start", lambda d: prefill(d, v=misaligned(qkv(d)[2])), V, "v must start 16-byte aligned",
        CUDA_ONLY),
    Bad("k_head_stride_not_16_bytes", lambda d: prefill(d, k=torch.randn(8, 2, 68, device=d).to(BF16)[..., :64]), V,
        "k must start 16-byte aligned", CUDA_ONLY),
    # head dims
    Bad("head_dim_60", lambda d: prefill(d, *qkv(d, d=60)), V, "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("head_dim_0", lambda d: prefill(d, *qkv(d, d=0)), V, "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("head_dim_300", lambda d: prefill(d, *qkv(d, d=300)), V, "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("head_dim_520", lambda d: prefill(d, *qkv(d, d=520)), V, "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("k_head_dim_mismatch", lambda d: prefill(d, k=qkv(d, d=128)[1]), V, "k's head_dim must equal q's"),
    Bad("v_head_dim_60", lambda d: prefill(d, *qkv(d, dv=60)), V, "v's head_dim (v.size(-1)) must be a multiple of 8"),
    Bad("v_head_dim_520", lambda d: prefill(d, *qkv(d, dv=520)), V,
        "v's head_dim (v.size(-1)) must be a multiple of 8"),
    # heads and tokens
    Bad("gqa_not_divisible", lambda d: prefill(d, *qkv(d, hq=6, hkv=4)), V, "q's heads (6) must be a multiple"),
    Bad("zero_q_heads", lambda d: prefill(d, *qkv(d, hq=0)), V, "q and k need at least one head"),
    Bad("zero_kv_heads", lambda d: prefill(d, *qkv(d, hkv=0)), V, "q and k need at least one head"),
    Bad("v_heads_mismatch", lambda d: prefill(d, v=qkv(d, hkv=4)[2]), V, "v must have k's number of heads"),
    Bad("v_tokens_mismatch", lambda d: prefill(d, v=qkv(d, skv=7)[2]), V, "v must have k's number of tokens"),
    Bad("batch_mismatch", lambda d: prefill(d, qkv(d, batch=2)[0], *qkv(d, batch=3)[1:]), V,
        "k and v must have q's batch size"),
    # scalars
    Bad("window_left_minus_2", lambda d: prefill(d, window_left=-2), V, "window_left must be -1"),
    Bad("window_left_minus_5", lambda d: prefill(d, window_left=-5), V, "window_left must be -1"),
    Bad("chunk_size_negative", lambda d: prefill(d, chunk_size=-1), V, "chunk_size must be 0 (no chunks)"),
    Bad("chunk_size_past_int32", lambda d: prefill(d, chunk_size=2**31), V, "chunk_size must be 0 (no chunks)"),
    Bad("chunk_size_with_soft_cap_on_cuda", lambda d: prefill(d, chunk_size=64, logits_soft_cap=30.0), V,
        "chunk_size and logits_soft_cap do not combine", CUDA_ONLY),
    Bad("paged_chunk_size_with_soft_cap_on_cuda", lambda d: paged(d, chunk_size=8, logits_soft_cap=30.0), V,
        "chunk_size and logits_soft_cap do not combine", CUDA_ONLY),
    Bad("soft_cap_negative", lambda d: prefill(d, logits_soft_cap=-1.0), V, "logits_soft_cap must be >= 0"),
    Bad("soft_cap_nan", lambda d: prefill(d, logits_soft_cap=float("nan")), V, "logits_soft_cap must be >= 0"),
    Bad("soft_cap_inf", lambda d: prefill(d, logits_soft_cap=float("inf")), V, "logits_soft_cap must be >= 0"),
    Bad("soft_cap_past_float32", lambda d: prefill(d, logits_soft_cap=1e39), V, "logits_soft_cap must be >= 0"),
    Bad("soft_cap_too_small_for_scale", lambda d: prefill(d, logits_soft_cap=1e-40), V,
        "logits_soft_cap is too small for sm_scale"),
    Bad("sm_scale_zero", lambda d: prefill(d, sm_scale=0.0), V, "sm_scale must be a positive number"),
    Bad("sm_scale_negative", lambda d: prefill(d, sm_scale=-0.125), V, "sm_scale must be a positive number"),
    Bad("sm_scale_nan", lambda d: prefill(d, sm_scale=float("nan")), V, "sm_scale must be a positive number"),
    Bad("sm_scale_inf", lambda d: prefill(d, sm_scale=float("inf")), V, "sm_scale must be a positive number"),
    Bad("sm_scale_past_float32", lambda d: prefill(d, sm_scale=1e39), V, "sm_scale must be a positive number"),
    # ragged indptrs
    Bad("only_qo_indptr", lambda d: prefill(d, qo_indptr=ints(d, 0, 8)), V,
        "qo_indptr and kv_indptr must be given together"),
    Bad("only_kv_indptr", lambda d: prefill(d, kv_indptr=ints(d, 0, 8)), V,
        "qo_indptr and kv_indptr must be given together"),
    Bad("ragged_with_4d_q", lambda d: prefill(d, *qkv(d, batch=1), ints(d, 0, 8), ints(d, 0, 8)), V,
        "with qo_indptr/kv_indptr (a ragged batch)"),
    Bad("qo_indptr_int64", lambda d: ragged(d, qo=ints(d, 0, 3, 8, dtype=torch.int64)), T, "qo_indptr must be int32"),
    Bad("kv_indptr_float", lambda d: ragged(d, kv=ints(d, 0, 5, 8, dtype=torch.float32)), T,
        "kv_indptr must be int32"),
    Bad("qo_indptr_2d", lambda d: ragged(d, qo=ints(d, 0, 3, 8)[None]), V, "qo_indptr must be a 1-D"),
    Bad("qo_indptr_empty", lambda d: ragged(d, qo=ints(d), kv=ints(d)), V, "qo_indptr must be a 1-D"),
    Bad("indptr_lengths_differ", lambda d: ragged(d, qo=(0, 8), kv=(0, 5, 8)), V,
        "kv_indptr must have qo_indptr's length"),
    Bad("qo_indptr_other_device", lambda d: ragged(d, qo=ints(other_device(d), 0, 3, 8)), V,
        "qo_indptr must be on q's device"),
    Bad("kv_indptr_other_device", lambda d: ragged(d, kv=ints(other_device(d), 0, 5, 8)), V,
        "kv_indptr must be on q's device"),
    Bad("qo_indptr_strided", lambda d: ragged(d, qo=ints(d, 0, 0, 3, 3, 8, 8)[::2]), V, "qo_indptr must be contiguous"),
    # int32 limits (expanded views: no memory behind the sizes)
    Bad("q_tokens_past_int32", lambda d: prefill(d, q=expanded((2**31, 4, 64), d)), V, "at most 2^31 - 1 tokens"),
    Bad("k_tokens_past_int32", lambda d: prefill(d, k=expanded((2**31, 2, 64), d), v=expanded((2**31, 2, 64), d)), V,
        "at most 2^31 - 1 tokens"),
    Bad("batch_past_int32", lambda d: prefill(d, *(expanded((2**31, 1, 1, 64), d) for _ in range(3))), V,
        "at most 2^31 - 1 tokens, heads and sequences"),
    Bad("query_tiles_past_int32", lambda d: prefill(d, q=expanded((2**31 - 1, 512, 64), d),
                                                    k=expanded((8, 512, 64), d), v=expanded((8, 512, 64), d)),
        V, "q has too many query tiles x heads", CUDA_ONLY, fake_sees_it=False),
    # sinks
    Bad("sinks_int", lambda d: prefill(d, sinks=torch.zeros(4, dtype=torch.int32, device=d)), T,
        "sinks must be float32, bfloat16 or float16"),
    Bad("sinks_float64", lambda d: prefill(d, sinks=torch.zeros(4, dtype=torch.float64, device=d)), T,
        "sinks must be float32, bfloat16 or float16"),
    Bad("sinks_one_per_kv_head", lambda d: prefill(d, sinks=torch.zeros(2, device=d)), V,
        "sinks must be [num_qo_heads] = [4]"),
    Bad("sinks_2d", lambda d: prefill(d, sinks=torch.zeros(1, 4, device=d)), V, "sinks must be [num_qo_heads]"),
    Bad("sinks_other_device", lambda d: prefill(d, sinks=torch.zeros(4, device=other_device(d))), V,
        "sinks must be on q's device"),
    Bad("sinks_requires_grad", lambda d: prefill(d, sinks=grad(torch.zeros(4, device=d))), R, "sinks requires grad"),
    Bad("paged_sinks_shape", lambda d: paged(d, sinks=torch.zeros(5, device=d)), V,
        "sinks must be [num_qo_heads] = [4]"),
    # grad
    Bad("q_requires_grad", lambda d: prefill(d, q=grad(qkv(d)[0])), R, "q requires grad"),
    Bad("v_requires_grad", lambda d: prefill(d, v=grad(qkv(d)[2])), R, "v requires grad"),

    # ---- prefill_paged ----
    Bad("paged_kv_layout_lowercase", lambda d: paged(d, kv_layout="nhd"), V, 'kv_layout must be "NHD" or "HND"'),
    Bad("paged_kv_layout_bhnd", lambda d: paged(d, kv_layout="BHND"), V, 'kv_layout must be "NHD" or "HND"'),
    Bad("paged_q_rank_4", lambda d: paged(d, q=torch.randn(1, 12, 4, 64, device=d).to(BF16)), V, "q must be 3-D"),
    Bad("paged_k_cache_rank_3", lambda d: paged(d, k_cache=torch.randn(6, 8, 128, device=d).to(BF16),
                                                v_cache=torch.randn(6, 8, 128, device=d).to(BF16)), V,
        "k_cache must be 4-D"),
    Bad("paged_v_cache_shape", lambda d: paged(d, v_cache=torch.randn(5, 8, 2, 64, device=d).to(BF16)), V,
        "v_cache must have k_cache's shape"),
    Bad("paged_q_int", lambda d: paged(d, q=torch.zeros(12, 4, 64, dtype=torch.int32, device=d)), T,
        "q must be float16, bfloat16"),
    Bad("paged_v_scale_without_fp8_cache", lambda d: paged(d, v_scale=scale(d)), V,
        "v_scale descales fp8 v_cache, but v_cache is"),
    Bad("paged_k_cache_dtype", lambda d: paged(d, k_cache=torch.randn(6, 8, 2, 64, device=d).half()), T,
        "k_cache must have q's dtype"),
    Bad("paged_v_cache_other_device", lambda d: paged(d, v_cache=torch.randn(6, 8, 2, 64).to(BF16).to(
        other_device(d))), V, "v_cache must be on q's device"),
    Bad("paged_k_cache_last_dim_strided", lambda d: paged(d, k_cache=torch.randn(6, 8, 2, 128, device=d).to(
        BF16)[..., ::2]), V, "k_cache must have a contiguous last dimension"),
    Bad("paged_head_dim_mismatch", lambda d: paged(d, q=torch.randn(12, 4, 128, device=d).to(BF16)), V,
        "k_cache's head_dim must equal q's"),
    Bad("paged_v_cache_head_dim_12", lambda d: paged(d, v_cache=torch.randn(6, 8, 2, 12, device=d).to(BF16)), V,
        "v_cache's head_dim (v_cache.size(-1)) must be a multiple of 8"),
    Bad("paged_head_dim_300", lambda d: paged(d, q=torch.randn(12, 4, 300, device=d).to(BF16)), V,
        "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("paged_gqa_not_divisible", lambda d: paged(d, q=torch.randn(12, 3, 64, device=d).to(BF16)), V,
        "must be a multiple of the cache's heads"),
    Bad("paged_zero_pages", lambda d: paged(d, k_cache=torch.randn(0, 8, 2, 64, device=d).to(BF16),
                                            v_cache=torch.randn(0, 8, 2, 64, device=d).to(BF16)), V,
        "k_cache needs at least one page"),
    Bad("paged_zero_page_size", lambda d: paged(d, k_cache=torch.randn(6, 0, 2, 64, device=d).to(BF16),
                                                v_cache=torch.randn(6, 0, 2, 64, device=d).to(BF16)), V,
        "k_cache needs at least one page"),
    Bad("paged_qo_indptr_int64", lambda d: paged(d, qo_indptr=ints(d, 0, 5, 12, dtype=torch.int64)), T,
        "qo_indptr must be int32"),
    Bad("paged_block_table_int64", lambda d: paged(d, block_table=torch.zeros(2, 3, dtype=torch.int64, device=d)), T,
        "block_table must be int32"),
    Bad("paged_kv_lens_float", lambda d: paged(d, kv_lens=torch.tensor([9.0, 20.0], device=d)), T,
        "kv_lens must be int32"),
    Bad("paged_block_table_1d", lambda d: paged(d, block_table=ints(d, 3, 1, 0)), V, "block_table must be 2-D"),
    Bad("paged_kv_lens_2d", lambda d: paged(d, kv_lens=ints(d, 9, 20)[None]), V, "kv_lens must be 1-D"),
    Bad("paged_block_table_rows", lambda d: paged(d, block_table=ints(d, 3, 1, 0)[None]), V,
        "block_table must have one row per sequence"),
    Bad("paged_kv_lens_length", lambda d: paged(d, kv_lens=ints(d, 9)), V, "kv_lens must have one entry per sequence"),
    Bad("paged_qo_indptr_empty", lambda d: paged(d, qo_indptr=ints(d)), V, "qo_indptr must have batch + 1 entries"),
    Bad("paged_block_table_other_device", lambda d: paged(d, block_table=ints(other_device(d), 3, 1, 0, 0, 4, 2).view(
        2, 3)), V, "block_table must be on q's device"),
    Bad("paged_kv_lens_other_device", lambda d: paged(d, kv_lens=ints(other_device(d), 9, 20)), V,
        "kv_lens must be on q's device"),
    Bad("paged_block_table_strided", lambda d: paged(d, block_table=ints(d, *range(12)).view(2, 6)[:, ::2]), V,
        "block_table must have a contiguous last dimension"),
    Bad("paged_table_past_int32", lambda d: paged(d, k_cache=expanded((1, 2**16, 2, 64), d),
                                                  v_cache=expanded((1, 2**16, 2, 64), d),
                                                  block_table=torch.zeros(2, 2**15, dtype=torch.int32, device=d)), V,
        "at most 2^31 - 1 tokens in q and per sequence"),
    Bad("paged_sm_scale_nan", lambda d: paged(d, sm_scale=float("nan")), V, "sm_scale must be a positive number"),
    Bad("paged_window_left_minus_3", lambda d: paged(d, window_left=-3), V, "window_left must be -1"),
    Bad("paged_chunk_size_negative", lambda d: paged(d, chunk_size=-8), V, "chunk_size must be 0 (no chunks)"),
    Bad("paged_soft_cap_negative", lambda d: paged(d, logits_soft_cap=-2.0), V, "logits_soft_cap must be >= 0"),
    Bad("paged_q_float32_on_cuda", lambda d: paged(d, q=torch.randn(12, 4, 64, device=d),
                                                   k_cache=torch.randn(6, 8, 2, 64, device=d),
                                                   v_cache=torch.randn(6, 8, 2, 64, device=d)), T,
        "on CUDA, q, k and v must be", CUDA_ONLY),
    Bad("paged_k_cache_misaligned", lambda d: paged(d, k_cache=misaligned(torch.randn(6, 8, 2, 64, device=d).to(BF16))),
        V, "k_cache must start 16-byte aligned", CUDA_ONLY),
    Bad("paged_k_cache_requires_grad", lambda d: paged(d, k_cache=grad(torch.randn(6, 8, 2, 64, device=d).to(BF16))),
        R, "k_cache requires grad"),

    # ---- merge_states ----
    # out= overloads
    Bad("out_wrong_shape", lambda d: prefill_out(d, out=torch.empty(8, 4, 32, device=d, dtype=BF16)), V,
        "out must be q's shape with v's head_dim [8, 4, 64]"),
    Bad("out_wrong_dtype", lambda d: prefill_out(d, out=torch.empty(8, 4, 64, device=d)), T,
        "out must have the output dtype (torch.bfloat16"),
    Bad("out_bf16_for_fp8_q_with_fp16_out",
        lambda d: prefill_out(d, **dict(zip("qkv", fp8(qkv(d), q=E4M3))), out_dtype=torch.float16), T,
        "out must have the output dtype (torch.float16"),
    Bad("out_other_device", lambda d: prefill_out(d, out=torch.empty(8, 4, 64, device=other_device(d), dtype=BF16)),
        V, "out must be on q's device"),
    Bad("out_last_dim_strided", lambda d: prefill_out(d, out=torch.empty(8, 4, 128, device=d, dtype=BF16)[..., ::2]),
        V, "out must have a contiguous last dimension"),
    Bad("out_expanded", lambda d: prefill_out(d, out=torch.empty(1, 1, 64, device=d, dtype=BF16).expand(8, 4, 64)), V,
        "out must not have elements that share memory"),
    Bad("out_is_q", out_is_q, V, "out must not share memory with the op's inputs", fake_sees_it=False),
    Bad("out_shares_lse", out_sharing_lse, V, "out and lse must not share memory", fake_sees_it=False),
    Bad("out_misaligned", lambda d: prefill_out(d, out=misaligned(torch.empty(8, 4, 64, device=d, dtype=BF16))), V,
        "out must start 16-byte aligned", CUDA_ONLY),
    Bad("out_requires_grad", lambda d: prefill_out(d, out=grad(torch.empty(8, 4, 64, device=d, dtype=BF16))), R,
        "out requires grad"),
    Bad("lse_wrong_dtype", lambda d: prefill_out(d, lse=torch.empty(8, 4, device=d, dtype=torch.float64)), T,
        "lse must be float32"),
    Bad("lse_wrong_shape", lambda d: prefill_out(d, lse=torch.empty(8, 4, 1, device=d)), V,
        "lse must be q's shape without head_dim [8, 4]"),
    Bad("lse_other_device", lambda d: prefill_out(d, lse=torch.empty(8, 4, device=other_device(d))), V,
        "lse must be on q's device"),
    Bad("paged_out_wrong_shape", lambda d: paged_out(d, out=torch.empty(8, 4, 64, device=d, dtype=BF16)), V,
        "out must be q's shape with v's head_dim [12, 4, 64]"),
    Bad("paged_lse_wrong_dtype", lambda d: paged_out(d, lse=torch.empty(12, 4, device=d, dtype=BF16)), T,
        "lse must be float32"),
    Bad("paged_out_bad_q", lambda d: paged_out(d, q=torch.randn(12, 4, 60, device=d).to(BF16)), V,
        "head_dim (q.size(-1)) must be a multiple of 8"),
    Bad("merge_out_rank_1", lambda d: merge(d, out_a=torch.randn(5, device=d), out_b=torch.randn(5, device=d)), V,
        "out_a must be [..., heads, head_dim]"),
    Bad("merge_out_b_shape", lambda d: merge(d, out_b=torch.randn(4, 4, 64, device=d).to(BF16)), V,
        "out_b must have out_a's shape"),
    Bad("merge_out_dtypes_differ", lambda d: merge(d, out_b=torch.randn(5, 4, 64, device=d).half()), T,
        "out_a and out_b must share one floating dtype"),
    Bad("merge_out_int", lambda d: merge(d, out_a=torch.zeros(5, 4, 64, dtype=torch.int32, device=d),
                                         out_b=torch.zeros(5, 4, 64, dtype=torch.int32, device=d)), T,
        "out_a and out_b must share one floating dtype"),
    Bad("merge_lse_a_shape", lambda d: merge(d, lse_a=torch.randn(5, 2, device=d)), V,
        "lse_a must be out's shape without head_dim"),
    Bad("merge_lse_b_float16", lambda d: merge(d, lse_b=torch.randn(5, 4, device=d).half()), T,
        "lse_b must be float32"),
    Bad("merge_lse_a_other_device", lambda d: merge(d, lse_a=torch.randn(5, 4, device=other_device(d))), V,
        "lse_a must be on out_a's device"),
    Bad("merge_out_b_other_device", lambda d: merge(d, out_b=torch.randn(5, 4, 64).to(BF16).to(other_device(d))), V,
        "out_b must be on out_a's device"),
    Bad("merge_out_a_requires_grad", lambda d: merge(d, out_a=grad(torch.randn(5, 4, 64, device=d).to(BF16))), R,
        "out_a requires grad"),
]

# Bad values inside device tensors. Each runs on CUDA under every kv-tile path that reads
# them (the wgmma kernel where it takes the call, and the mma.sync kernel).
CLAMPED: list[Clamped] = [
    Clamped("qo_indptr_decreasing", lambda d: ragged(d, qo=(0, 6, 3)), "qo_indptr must be non-decreasing"),
    Clamped("qo_indptr_past_q", lambda d: ragged(d, qo=(0, 3, 900)), "qo_indptr must be non-decreasing"),
    Clamped("qo_indptr_negative", lambda d: ragged(d, qo=(-1000, 3, 8)), "qo_indptr must be non-decreasing"),
    Clamped("kv_indptr_decreasing", lambda d: ragged(d, kv=(0, 8, 2)), "kv_indptr must be non-decreasing",
            ({}, dict(causal=True))),
    Clamped("kv_indptr_past_k", lambda d: ragged(d, kv=(0, 5, 10**6)), "kv_indptr must be non-decreasing",
            ({}, dict(causal=True), dict(window_left=2))),
    Clamped("kv_indptr_negative", lambda d: ragged(d, kv=(-5, 5, 8)), "kv_indptr must be non-decreasing"),
    Clamped("paged_page_ids_negative", lambda d: paged(d, block_table=ints(d, -1, -7, -2**31, 0, 4, 2).view(2, 3)),
            "names pages outside", ({}, dict(causal=True))),
    Clamped("paged_page_ids_negative_hnd", lambda d: paged(d, block_table=ints(d, -1, -7, -2**31, 0, 4, 2).view(2, 3),
                                                           layout="HND"), "names pages outside"),
    Clamped("paged_page_ids_huge", lambda d: paged(d, block_table=ints(d, 3, 2**31 - 1, 6, 0, 10**6, 2).view(2, 3)),
            "names pages outside"),
    Clamped("paged_page_ids_huge_hnd", lambda d: paged(d, block_table=ints(d, 3, 2**31 - 1, 6, 0, 10**6, 2).view(2, 3),
                                                       layout="HND"), "names pages outside"),
    Clamped("paged_kv_lens_past_table", lambda d: paged(d, kv_lens=ints(d, 9, 2**31 - 1)), "must be within",
            ({}, dict(causal=True))),
    Clamped("paged_kv_lens_negative", lambda d: paged(d, kv_lens=ints(d, -4, 20)), "must be within"),
    Clamped("paged_qo_indptr_past_q", lambda d: paged(d, qo_indptr=ints(d, 0, 5, 400)), "qo_indptr must be"),
    Clamped("paged_fp8_page_ids_huge", lambda d: paged(d, block_table=ints(d, 3, 2**31 - 1, 6, 0, 10**6, 2).view(2, 3),
                                                       fp8_cache=E5M2), "names pages outside", ({}, dict(causal=True))),
    # Descale factors that mean nothing: CUDA uses them as given (no host sync); the values stay finite in memory.
    Clamped("k_scale_zero", lambda d: prefill(d, *fp8(qkv(d)), k_scale=scale(d) * 0), "k_scale must be positive"),
    Clamped("v_scale_negative", lambda d: prefill(d, *fp8(qkv(d)), v_scale=-scale(d, 2)), "v_scale must be positive"),
    Clamped("q_scale_nan", lambda d: prefill(d, *fp8(qkv(d), q=E5M2), q_scale=scale(d) * math.nan),
            "q_scale must be positive and finite"),
]

BAD_BY_ID = {c.id: c for c in BAD}
CLAMPED_BY_ID = {c.id: c for c in CLAMPED}
assert len(BAD_BY_ID) == len(BAD) and len(CLAMPED_BY_ID) == len(CLAMPED)


def op_of(name: str):
    """"prefill" -> attn::prefill.default, "prefill.out" -> attn::prefill.out."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.attn, packet), overload or "default")


def call(case_build, dev: str, extra_kwargs: dict | None = None):
    name, args, kwargs = case_build(dev)
    return op_of(name)(*args, **kwargs, **(extra_kwargs or {}))


def raised(fn) -> tuple[str | None, str]:
    """(exception type name or None, message) of fn()."""
    try:
        fn()
    except Exception as error:  # noqa: BLE001  (the type is what the caller checks)
        return type(error).__name__, str(error).splitlines()[0]
    return None, ""


def fake_message(case: Bad, dev: str) -> tuple[str | None, str]:
    """The same call through the fake kernel (what torch.compile traces): the inputs are
    made inside the fake mode, so fake CUDA tensors need no GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def run():
        with FakeTensorMode():
            call(case.build, dev)

    return raised(run)


def small_valid_call_ok(dev: str) -> bool:
    """The context still works: a small call against the float64 reference."""
    from torch_attn.reference import prefill_reference

    q, k, v = qkv(dev, sq=33, skv=65)
    with torch.no_grad():
        out, lse = torch.ops.attn.prefill(q, k, v, causal=True)
    ref, _ = prefill_reference(q, k, v, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return bool(torch.isfinite(out).all()) and (out.double() - ref).abs().max().item() < 0.05


def run_case(case_id: str, dev: str) -> dict:
    """One case in this process: what it raised (and what the fake raises for it), or for a
    clamped case that every variant finished; then whether a valid call still works."""
    import torch_attn  # noqa: F401

    result: dict = {"id": case_id}
    if case_id in BAD_BY_ID:
        case = BAD_BY_ID[case_id]
        result["exc"], result["message"] = raised(lambda: call(case.build, dev))
        result["fake_exc"], result["fake_message"] = fake_message(case, dev)
    else:
        case = CLAMPED_BY_ID[case_id]
        for kwargs in case.kwargs_variants:
            exc, message = raised(lambda: (call(case.build, dev, kwargs), torch.cuda.synchronize()))
            if exc is not None:
                result["exc"], result["message"] = exc, message
                break
        else:
            result["exc"] = None
    result["valid_call_ok"] = small_valid_call_ok(dev)
    return result


if __name__ == "__main__":
    print(json.dumps(run_case(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda")), flush=True)
