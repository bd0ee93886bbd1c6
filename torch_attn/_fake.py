"""Fake (meta) kernels of the attn ops, so torch.compile traces them without running them.

They mirror the checks of csrc/prefill_checks.cpp, csrc/prefill_cuda.cpp and
csrc/merge_states.cpp with the same exception types and the same messages
(tests/test_bad_input.py compares the two on every malformed call). torch._check_value /
_check_type take symbolic conditions too, so dynamic shapes add no guards beyond the checks'.
"""
from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_FP8_OUT_DTYPES = (torch.bfloat16, torch.float16)
_INT32_LIMIT = 2**31
_FLOAT32_MAX = torch.finfo(torch.float32).max


def _num(x: float) -> str:
    """A double as C++'s ostream prints it (six significant digits)."""
    return format(x, "g")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _rank_help(dim: int) -> str:
    return "[tokens, heads, head_dim]" if dim == 3 else "[batch, tokens, heads, head_dim]"


def check_mask_args(op: str, head_dim_qk, sm_scale, window_left, chunk_size, logits_soft_cap) -> float:
    """The scalar arguments every attention op shares; returns sm_scale with its default applied."""
    torch._check_value(window_left >= -1,
                       lambda: f"{op}: window_left must be -1 (no window) or >= 0, got {window_left}")
    torch._check_value(0 <= chunk_size < _INT32_LIMIT,
                       lambda: f"{op}: chunk_size must be 0 (no chunks) or a key count from 1 to 2^31 - 1, got "
                               f"{chunk_size}")
    cap = logits_soft_cap
    torch._check_value(math.isfinite(cap) and 0 <= cap <= _FLOAT32_MAX,
                       lambda: f"{op}: logits_soft_cap must be >= 0 (0 disables it) and finite in float32, got "
                               f"{_num(cap)}")
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim_qk)
    torch._check_value(math.isfinite(scale) and 0 < scale <= _FLOAT32_MAX,
                       lambda: f"{op}: sm_scale must be a positive number, finite in float32, got {_num(scale)}")
    torch._check_value(cap == 0 or scale / cap <= _FLOAT32_MAX,
                       lambda: f"{op}: logits_soft_cap is too small for sm_scale (sm_scale / logits_soft_cap must be "
                               f"finite in float32), got logits_soft_cap {_num(cap)} and sm_scale {_num(scale)}")
    return scale


def _check_head_dims(op: str, v_name: str, head_dim_qk, head_dim_v) -> None:
    torch._check_value(head_dim_qk % 8 == 0 and 8 <= head_dim_qk <= 512,
                       lambda: f"{op}: head_dim (q.size(-1)) must be a multiple of 8 from 8 to 512, got {head_dim_qk}")
    torch._check_value(head_dim_v % 8 == 0 and 8 <= head_dim_v <= 512,
                       lambda: f"{op}: {v_name}'s head_dim ({v_name}.size(-1)) must be a multiple of 8 from 8 to 512, "
                               f"got {head_dim_v}")


def _check_cuda_rows(op: str, name: str, t: torch.Tensor) -> None:
    """The kernels move rows 16 bytes at a time: every row of t starts 16-byte aligned."""
    per_16_bytes = 16 // t.element_size()
    aligned = t.storage_offset() * t.element_size() % 16 == 0
    for d in range(t.dim() - 1):
        aligned = aligned and (t.shape[d] <= 1 or t.stride(d) % per_16_bytes == 0)
    torch._check_value(aligned, lambda: f"{op}: on CUDA, {name} must start 16-byte aligned and have strides that "
                                        f"are multiples of {per_16_bytes} elements (every row 16-byte aligned), got "
                                        f"strides {list(t.stride())} and storage offset {t.storage_offset()}")


def check_dtypes(op: str, q, k_name: str, k, v_name: str, v, out_dtype) -> torch.dtype:
    """q's, k's and v's dtypes together (csrc/fp8_checks.cpp); returns the output dtype."""
    fp8_q = q.dtype in _FP8_DTYPES
    torch._check_type(fp8_q or q.dtype in _FLOAT_DTYPES,
                      lambda: f"{op}: q must be float16, bfloat16, float32, float8_e4m3fn or float8_e5m2, got "
                              f"{q.dtype}")
    if fp8_q:
        torch._check_type(k.dtype in _FP8_DTYPES,
                          lambda: f"{op}: {k_name} must be float8_e4m3fn or float8_e5m2 like q (fp8 q takes fp8 keys "
                                  f"and values), got {k.dtype}")
    else:
        torch._check_type(k.dtype == q.dtype or k.dtype in _FP8_DTYPES,
                          lambda: f"{op}: {k_name} must have q's dtype ({q.dtype}) or be float8_e4m3fn or float8_e5m2 "
                                  f"(an fp8 KV cache), got {k.dtype}")
    torch._check_type(v.dtype == k.dtype,
                      lambda: f"{op}: {v_name} must have {k_name}'s dtype ({k.dtype}), got {v.dtype}")
    if not fp8_q:
        torch._check_type(out_dtype is None or out_dtype == q.dtype,
                          lambda: f"{op}: out_dtype must be None or q's dtype ({q.dtype}): it chooses the output "
                                  f"of fp8 q only, got {out_dtype}")
        return q.dtype
    out = torch.bfloat16 if out_dtype is None else out_dtype
    torch._check_type(out in _FP8_OUT_DTYPES,
                      lambda: f"{op}: out_dtype must be torch.bfloat16 or torch.float16 for fp8 q, got {out}")
    return out


def check_scales(op: str, scales: dict, q, k_name: str, k, v_name: str, v, num_qo_heads, num_kv_heads) -> None:
    """The descale factors' types, shapes and devices (csrc/fp8_checks.cpp; their values: CPU only)."""
    for name, input_name, t, heads in (("q_scale", "q", q, num_qo_heads), ("k_scale", k_name, k, num_kv_heads),
                                       ("v_scale", v_name, v, num_kv_heads)):
        scale = scales[name]
        if scale is None:
            continue
        torch._check_value(t.dtype in _FP8_DTYPES,
                           lambda: f"{op}: {name} descales fp8 {input_name}, but {input_name} is {t.dtype} (pass None)")
        torch._check_type(scale.dtype == torch.float32, lambda: f"{op}: {name} must be float32, got {scale.dtype}")
        torch._check_value(scale.dim() == 0 or (scale.dim() == 1 and scale.shape[0] in (1, heads)),
                           lambda: f"{op}: {name} must be [] or [1] (one factor) or [{heads}] (one per head of "
                                   f"{input_name}), got shape {_shape(scale)}")
        torch._check_value(scale.device == q.device,
                           lambda: f"{op}: {name} must be on q's device ({q.device}), got {scale.device}")


def check_out_args(op: str, q: torch.Tensor, head_dim_v, out_dtype, out: torch.Tensor, lse) -> None:
    """The out= overloads' buffers (csrc/prefill_checks.cpp; the fakes cannot see shared memory)."""
    out_shape = [*q.shape[:-1], head_dim_v]
    torch._check_type(out.dtype == out_dtype, lambda: f"{op}: out must have the output dtype ({out_dtype}: q's, or "
                                                      f"out_dtype for fp8 q), got {out.dtype}")
    torch._check_value(list(out.shape) == out_shape,
                       lambda: f"{op}: out must be q's shape with v's head_dim {out_shape}, got {_shape(out)}")
    torch._check_value(out.device == q.device,
                       lambda: f"{op}: out must be on q's device ({q.device}), got {out.device}")
    torch._check_value(out.stride(-1) == 1, lambda: f"{op}: out must have a contiguous last dimension (stride 1), got "
                                                    f"stride {out.stride(-1)}")
    if lse is not None:
        lse_shape = list(q.shape[:-1])
        torch._check_type(lse.dtype == torch.float32, lambda: f"{op}: lse must be float32, got {lse.dtype}")
        torch._check_value(list(lse.shape) == lse_shape,
                           lambda: f"{op}: lse must be q's shape without head_dim {lse_shape}, got {_shape(lse)}")
        torch._check_value(lse.device == q.device,
                           lambda: f"{op}: lse must be on q's device ({q.device}), got {lse.device}")
    for name, t in (("out", out), ("lse", lse)):
        expanded = t is not None and any(size > 1 and stride == 0 for size, stride in zip(t.shape, t.stride()))
        torch._check_value(not expanded, lambda: f"{op}: {name} must not have elements that share memory (an expanded "
                                                 f"view), got strides {list(t.stride())}")
    if q.device.type == "cuda":
        _check_cuda_rows(op, "out", out)


def check_cuda_args(op: str, q: torch.Tensor, k: torch.Tensor, head_dims, tensors: dict[str, torch.Tensor],
                    chunk_size, logits_soft_cap) -> None:
    """The CUDA kernels' own demands: half-precision or fp8 inputs (fp8: head dims in whole 16-byte copies), rows
    starting 16-byte aligned, chunks without a soft cap (a fake tensor has no address: its storage is taken to start
    aligned, as the caching allocator's blocks do)."""
    if q.device.type != "cuda":
        return
    torch._check_type(q.dtype != torch.float32,
                      lambda: f"{op}: on CUDA, q, k and v must be float16, bfloat16 or fp8 (float32 runs on CPU only), "
                              f"got {q.dtype}")
    torch._check_value(k.dtype not in _FP8_DTYPES or all(d % 16 == 0 for d in head_dims),
                       lambda: f"{op}: on CUDA, fp8 inputs need head dims that are multiples of 16, got "
                               f"({head_dims[0]}, {head_dims[1]})")
    for name, t in tensors.items():
        _check_cuda_rows(op, name, t)
    torch._check_value(chunk_size == 0 or logits_soft_cap == 0,
                       lambda: f"{op}: on CUDA, chunk_size and logits_soft_cap do not combine (the kernels have no "
                               f"variant with both; the CPU path runs it), got chunk_size {chunk_size} and "
                               f"logits_soft_cap {_num(logits_soft_cap)}")


def _check_indptr(name: str, indptr: torch.Tensor, q: torch.Tensor) -> None:
    torch._check_type(indptr.dtype == torch.int32, lambda: f"attn.prefill: {name} must be int32, got {indptr.dtype}")
    torch._check_value(indptr.dim() == 1 and indptr.numel() >= 1,
                       lambda: f"attn.prefill: {name} must be a 1-D [batch + 1] tensor, got shape {_shape(indptr)}")
    torch._check_value(indptr.device == q.device,
                       lambda: f"attn.prefill: {name} must be on q's device ({q.device}), got {indptr.device}")
    torch._check_value(indptr.stride(0) == 1, lambda: f"attn.prefill: {name} must be contiguous")


def check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap,
                       sinks, scales: dict, out_dtype) -> torch.dtype:
    """Returns the output dtype."""
    op = "attn.prefill"
    torch._check_value(q.dim() in (3, 4), lambda: f"{op}: q must be 3-D [tokens, heads, head_dim] or 4-D [batch, "
                                                  f"tokens, heads, head_dim], got {q.dim()}-D")
    for name, t in (("k", k), ("v", v)):
        torch._check_value(t.dim() == q.dim(),
                           lambda: f"{op}: {name} must be {q.dim()}-D {_rank_help(q.dim())} like q, got {t.dim()}-D")
    result_dtype = check_dtypes(op, q, "k", k, "v", v, out_dtype)
    for name, t in (("k", k), ("v", v)):
        torch._check_value(t.device == q.device, lambda: f"{op}: {name} must be on q's device ({q.device}), got "
                                                         f"{t.device}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        torch._check_value(t.stride(-1) == 1, lambda: f"{op}: {name} must have a contiguous last dimension (stride 1), "
                                                      f"got stride {t.stride(-1)}")
    head_dim = q.shape[-1]
    _check_head_dims(op, "v", head_dim, v.shape[-1])
    torch._check_value(k.shape[-1] == head_dim,
                       lambda: f"{op}: k's head_dim must equal q's ({head_dim}), got {k.shape[-1]}")
    num_qo_heads, num_kv_heads = q.shape[-2], k.shape[-2]
    torch._check_value(num_qo_heads >= 1 and num_kv_heads >= 1,
                       lambda: f"{op}: q and k need at least one head, got q heads {num_qo_heads}, k heads "
                               f"{num_kv_heads}")
    torch._check_value(v.shape[-2] == num_kv_heads,
                       lambda: f"{op}: v must have k's number of heads ({num_kv_heads}), got {v.shape[-2]}")
    torch._check_value(num_qo_heads % num_kv_heads == 0,
                       lambda: f"{op}: q's heads ({num_qo_heads}) must be a multiple of k's heads ({num_kv_heads}) "
                               "for GQA/MQA")
    torch._check_value(v.shape[-3] == k.shape[-3],
                       lambda: f"{op}: v must have k's number of tokens ({k.shape[-3]}), got {v.shape[-3]}")
    check_mask_args(op, head_dim, sm_scale, window_left, chunk_size, logits_soft_cap)
    check_scales(op, scales, q, "k", k, "v", v, num_qo_heads, num_kv_heads)
    torch._check_value((qo_indptr is None) == (kv_indptr is None),
                       lambda: f"{op}: qo_indptr and kv_indptr must be given together (a ragged batch) or both be None")
    if qo_indptr is not None:
        torch._check_value(q.dim() == 3, lambda: f"{op}: with qo_indptr/kv_indptr (a ragged batch), q, k and v must be "
                                                 f"3-D [total_tokens, heads, head_dim], got {q.dim()}-D q")
        _check_indptr("qo_indptr", qo_indptr, q)
        _check_indptr("kv_indptr", kv_indptr, q)
        torch._check_value(kv_indptr.numel() == qo_indptr.numel(),
                           lambda: f"{op}: kv_indptr must have qo_indptr's length ({qo_indptr.numel()} = batch + 1), "
                                   f"got {kv_indptr.numel()}")
        num_seqs, qo_len, kv_len = qo_indptr.numel() - 1, q.shape[0], k.shape[0]
    elif q.dim() == 4:
        torch._check_value(k.shape[0] == q.shape[0] and v.shape[0] == q.shape[0],
                           lambda: f"{op}: k and v must have q's batch size ({q.shape[0]}), got {k.shape[0]} and "
                                   f"{v.shape[0]}")
        num_seqs, qo_len, kv_len = q.shape[0], q.shape[1], k.shape[1]
    else:
        num_seqs, qo_len, kv_len = 1, q.shape[0], k.shape[0]
    torch._check_value(qo_len < _INT32_LIMIT and kv_len < _INT32_LIMIT and num_qo_heads < _INT32_LIMIT
                       and num_seqs < _INT32_LIMIT,
                       lambda: f"{op}: at most 2^31 - 1 tokens, heads and sequences in q and in k/v, got q shape "
                               f"{_shape(q)} and k shape {_shape(k)}")
    check_cuda_args(op, q, k, (head_dim, v.shape[-1]), {"q": q, "k": k, "v": v}, chunk_size, logits_soft_cap)
    check_sinks(op, sinks, q, num_qo_heads)
    return result_dtype


def check_sinks(op: str, sinks, q, num_qo_heads) -> None:
    if sinks is None:
        return
    torch._check_type(sinks.dtype in _FLOAT_DTYPES,
                      lambda: f"{op}: sinks must be float32, bfloat16 or float16, got {sinks.dtype}")
    torch._check_value(sinks.dim() == 1 and sinks.shape[0] == num_qo_heads,
                       lambda: f"{op}: sinks must be [num_qo_heads] = [{num_qo_heads}], got shape {_shape(sinks)}")
    torch._check_value(sinks.device == q.device,
                       lambda: f"{op}: sinks must be on q's device ({q.device}), got {sinks.device}")


@torch.library.register_fake("attn::prefill")
def _prefill_fake(q, k, v, qo_indptr=None, kv_indptr=None, *, causal=False, sm_scale=None, window_left=-1,
                  chunk_size=0, logits_soft_cap=0.0, sinks=None, q_scale=None, k_scale=None, v_scale=None,
                  out_dtype=None):
    scales = dict(q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    dtype = check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap,
                               sinks, scales, out_dtype)
    out = q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=dtype)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return out, lse


@torch.library.register_fake("attn::prefill.out")
def _prefill_out_fake(q, k, v, qo_indptr=None, kv_indptr=None, *, causal=False, sm_scale=None, window_left=-1,
                      chunk_size=0, logits_soft_cap=0.0, sinks=None, q_scale=None, k_scale=None, v_scale=None,
                      out_dtype=None, out, lse=None):
    scales = dict(q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    dtype = check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap,
                               sinks, scales, out_dtype)
    check_out_args("attn.prefill", q, v.shape[-1], dtype, out, lse)


def _check_int_vector(name: str, t: torch.Tensor, dim: int, q: torch.Tensor) -> None:
    op = "attn.prefill_paged"
    torch._check_type(t.dtype == torch.int32, lambda: f"{op}: {name} must be int32, got {t.dtype}")
    torch._check_value(t.dim() == dim, lambda: f"{op}: {name} must be {dim}-D, got shape {_shape(t)}")
    torch._check_value(t.device == q.device, lambda: f"{op}: {name} must be on q's device ({q.device}), got {t.device}")
    torch._check_value(t.stride(-1) == 1, lambda: f"{op}: {name} must have a contiguous last dimension")


def check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale, window_left,
                             chunk_size, logits_soft_cap, sinks, scales: dict, out_dtype) -> torch.dtype:
    """Returns the output dtype."""
    op = "attn.prefill_paged"
    torch._check_value(kv_layout in ("NHD", "HND"),
                       lambda: f'{op}: kv_layout must be "NHD" or "HND", got "{kv_layout}"')
    torch._check_value(q.dim() == 3, lambda: f"{op}: q must be 3-D [total_tokens, heads, head_dim], got {q.dim()}-D")
    torch._check_value(k_cache.dim() == 4, lambda: f"{op}: k_cache must be 4-D [pages, page_size, heads, head_dim] "
                                                   f"(NHD) or [pages, heads, page_size, head_dim] (HND), got "
                                                   f"{k_cache.dim()}-D")
    torch._check_value(v_cache.dim() == 4 and v_cache.shape[:3] == k_cache.shape[:3],
                       lambda: f"{op}: v_cache must have k_cache's shape up to head_dim {list(k_cache.shape[:3])}, got "
                               f"{_shape(v_cache)}")
    result_dtype = check_dtypes(op, q, "k_cache", k_cache, "v_cache", v_cache, out_dtype)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        torch._check_value(t.device == q.device,
                           lambda: f"{op}: {name} must be on q's device ({q.device}), got {t.device}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        torch._check_value(t.stride(-1) == 1, lambda: f"{op}: {name} must have a contiguous last dimension (stride 1), "
                                                      f"got stride {t.stride(-1)}")
    hnd = kv_layout == "HND"
    num_pages, page_size = k_cache.shape[0], k_cache.shape[2 if hnd else 1]
    num_kv_heads, head_dim = k_cache.shape[1 if hnd else 2], q.shape[-1]
    _check_head_dims(op, "v_cache", head_dim, v_cache.shape[3])
    torch._check_value(k_cache.shape[3] == head_dim,
                       lambda: f"{op}: k_cache's head_dim must equal q's ({head_dim}), got {k_cache.shape[3]}")
    torch._check_value(num_pages >= 1 and page_size >= 1 and num_kv_heads >= 1,
                       lambda: f"{op}: k_cache needs at least one page, page_size >= 1 and one head, got shape "
                               f"{_shape(k_cache)}")
    torch._check_value(q.shape[1] >= 1 and q.shape[1] % num_kv_heads == 0,
                       lambda: f"{op}: q's heads ({q.shape[1]}) must be a multiple of the cache's heads "
                               f"({num_kv_heads}) for GQA/MQA")
    _check_int_vector("qo_indptr", qo_indptr, 1, q)
    _check_int_vector("block_table", block_table, 2, q)
    _check_int_vector("kv_lens", kv_lens, 1, q)
    num_seqs = qo_indptr.numel() - 1
    torch._check_value(num_seqs >= 0, lambda: f"{op}: qo_indptr must have batch + 1 entries, got none")
    torch._check_value(block_table.shape[0] == num_seqs,
                       lambda: f"{op}: block_table must have one row per sequence ({num_seqs}), got "
                               f"{block_table.shape[0]}")
    torch._check_value(kv_lens.numel() == num_seqs,
                       lambda: f"{op}: kv_lens must have one entry per sequence ({num_seqs}), got {kv_lens.numel()}")
    max_pages = block_table.shape[1]
    table_fits = max_pages < _INT32_LIMIT and page_size < _INT32_LIMIT and max_pages * page_size < _INT32_LIMIT
    torch._check_value(table_fits and q.shape[0] < _INT32_LIMIT and q.shape[1] < _INT32_LIMIT
                       and num_seqs < _INT32_LIMIT and num_pages < _INT32_LIMIT,
                       lambda: f"{op}: at most 2^31 - 1 tokens in q and per sequence (block_table.size(1) * "
                               f"page_size), heads, sequences and pages, got q shape {_shape(q)}, k_cache shape "
                               f"{_shape(k_cache)} and block_table shape {_shape(block_table)}")
    check_mask_args(op, head_dim, sm_scale, window_left, chunk_size, logits_soft_cap)
    check_scales(op, scales, q, "k_cache", k_cache, "v_cache", v_cache, q.shape[1], num_kv_heads)
    check_cuda_args(op, q, k_cache, (head_dim, v_cache.shape[3]), {"q": q, "k_cache": k_cache, "v_cache": v_cache},
                    chunk_size, logits_soft_cap)
    check_sinks(op, sinks, q, q.shape[1])
    return result_dtype


@torch.library.register_fake("attn::prefill_paged")
def _prefill_paged_fake(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, *, kv_layout="NHD", causal=False,
                        sm_scale=None, window_left=-1, chunk_size=0, logits_soft_cap=0.0, sinks=None, q_scale=None,
                        k_scale=None, v_scale=None, out_dtype=None):
    scales = dict(q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    dtype = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale,
                                     window_left, chunk_size, logits_soft_cap, sinks, scales, out_dtype)
    out = q.new_empty((*q.shape[:-1], v_cache.shape[3]), dtype=dtype)
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("attn::prefill_paged.out")
def _prefill_paged_out_fake(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, *, kv_layout="NHD", causal=False,
                            sm_scale=None, window_left=-1, chunk_size=0, logits_soft_cap=0.0, sinks=None,
                            q_scale=None, k_scale=None, v_scale=None, out_dtype=None, out, lse=None):
    scales = dict(q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)
    dtype = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale,
                                     window_left, chunk_size, logits_soft_cap, sinks, scales, out_dtype)
    check_out_args("attn.prefill_paged", q, v_cache.shape[3], dtype, out, lse)


def check_merge_states_args(out_a, lse_a, out_b, lse_b) -> None:
    op = "attn.merge_states"
    torch._check_value(out_a.dim() >= 2, lambda: f"{op}: out_a must be [..., heads, head_dim], got {out_a.dim()}-D")
    torch._check_value(out_b.shape == out_a.shape,
                       lambda: f"{op}: out_b must have out_a's shape {_shape(out_a)}, got {_shape(out_b)}")
    torch._check_type(out_a.is_floating_point() and out_b.dtype == out_a.dtype,
                      lambda: f"{op}: out_a and out_b must share one floating dtype, got {out_a.dtype} and "
                              f"{out_b.dtype}")
    lse_shape = list(out_a.shape[:-1])
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        torch._check_value(list(t.shape) == lse_shape,
                           lambda: f"{op}: {name} must be out's shape without head_dim {lse_shape}, got {_shape(t)}")
        torch._check_type(t.dtype == torch.float32, lambda: f"{op}: {name} must be float32, got {t.dtype}")
    for name, t in (("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        torch._check_value(t.device == out_a.device,
                           lambda: f"{op}: {name} must be on out_a's device ({out_a.device}), got {t.device}")


@torch.library.register_fake("attn::merge_states")
def _merge_states_fake(out_a, lse_a, out_b, lse_b):
    check_merge_states_args(out_a, lse_a, out_b, lse_b)
    return out_a.new_empty(out_a.shape), lse_a.new_empty(lse_a.shape)
