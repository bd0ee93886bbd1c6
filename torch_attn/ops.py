"""Python wrappers of the attn ops: keyword arguments and an optional LSE. The ops refuse inputs
that require grad themselves (csrc/inference_only.cpp)."""
from __future__ import annotations

import torch

_prefill_op = torch.ops.attn.prefill.default
_prefill_paged_op = torch.ops.attn.prefill_paged.default
_prefill_out_op = torch.ops.attn.prefill.out
_prefill_paged_out_op = torch.ops.attn.prefill_paged.out
_merge_states_op = torch.ops.attn.merge_states.default


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
    window_left: int = -1,
    chunk_size: int = 0,
    logits_soft_cap: float = 0.0,
    qo_indptr: torch.Tensor | None = None,
    kv_indptr: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    q_scale: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
):
    """Attention of q over k/v for prefill.

    Shapes (the last dim must be contiguous; other strides are free):
      one sequence:      q [Sq, Hq, D],        k [Skv, Hkv, D],        v [Skv, Hkv, Dv]
      dense batch:       q [B, Sq, Hq, D],     k [B, Skv, Hkv, D],     v [B, Skv, Hkv, Dv]
      ragged batch:      q [total_q, Hq, D],   k [total_kv, Hkv, D],   v [total_kv, Hkv, Dv],
                         qo_indptr / kv_indptr int32 [B + 1] (cu_seqlens) on q's device
    Hq must be a multiple of Hkv (GQA/MQA); D and Dv multiples of 8 up to 512. Dv may
    differ from D (MLA prefill: DeepSeek-V3's D = 192, Dv = 128).

    Semantics: scores s = sm_scale * q.k (sm_scale defaults to 1/sqrt(D)); with
    logits_soft_cap > 0, s = cap * tanh(s / cap). Causal is bottom-right aligned:
    query i of a sequence sees key j iff j <= i + Skv - Sq; window_left >= 0 also
    hides keys j < i + Skv - Sq - window_left; chunk_size > 0 (chunked local attention,
    Llama 4) hides keys outside the query's chunk: j // chunk_size must equal
    (i + Skv - Sq) // chunk_size (floor division; positions counted as the causal mask
    counts them). A query that sees no key gets out = 0 and lse = -inf.

    sinks [Hq] (attention sinks, gpt-oss): per query head the logit of one more key that
    every row sees, taken as is (not scaled, capped or masked), whose value is 0: it enters
    only the softmax's denominator and lse. A row that sees no key then gets out = 0 and
    lse = sinks[h]. float32, bfloat16 or float16 (computed in float32).

    fp8 inputs: k and v may be float8_e4m3fn or float8_e5m2 (an fp8 KV cache; both one dtype)
    with any q, and q may be fp8 too when k and v are. q_scale / k_scale / v_scale are their
    descale factors (the real value is code * scale): float32 of shape [] or [1] (per tensor) or
    [Hq] / [Hkv] (per head); None means 1, and each is only taken with an fp8 input. The output of
    fp8 q is out_dtype (torch.bfloat16 by default, or torch.float16); otherwise out_dtype must be
    None or q's dtype. On CUDA, fp8 head dims must be multiples of 16 and the scales' values are
    used as given (no host sync: a zero, negative or non-finite scale scales the scores or the
    output by that value); the CPU path raises on them.

    Returns out (q's shape with Dv, the output dtype), and with return_lse also lse (float32,
    natural log, q's shape without D).

    out= (and optionally lse=): write the results into these buffers instead (the op
    attn::prefill.out; on CUDA it allocates nothing, CUDA-graph safe). out may be a view with
    any row strides (its last dim contiguous; on CUDA, rows 16-byte aligned); they are
    returned as given, and return_lse needs lse=.
    """
    kwargs = dict(causal=causal, sm_scale=sm_scale, window_left=window_left, chunk_size=chunk_size,
                  logits_soft_cap=logits_soft_cap, sinks=sinks, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                  out_dtype=out_dtype)
    if out is None and lse is None:
        out, lse = _prefill_op(q, k, v, qo_indptr, kv_indptr, **kwargs)
    else:
        _check_out_kwargs("prefill", out, lse, return_lse)
        _prefill_out_op(q, k, v, qo_indptr, kv_indptr, **kwargs, out=out, lse=lse)
    return (out, lse) if return_lse else out


def _check_out_kwargs(fn: str, out, lse, return_lse: bool) -> None:
    if out is None:
        raise ValueError(f"torch_attn.{fn}: lse= is a buffer of the out= form: pass out= as well")
    if return_lse and lse is None:
        raise ValueError(f"torch_attn.{fn}: return_lse=True with out= needs lse= (the buffer to return)")


def prefill_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    block_table: torch.Tensor,
    kv_lens: torch.Tensor,
    *,
    kv_layout: str = "NHD",
    causal: bool = False,
    sm_scale: float | None = None,
    window_left: int = -1,
    chunk_size: int = 0,
    logits_soft_cap: float = 0.0,
    sinks: torch.Tensor | None = None,
    q_scale: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
):
    """Prefill against a paged KV cache.

    Shapes:
      q            [total_q, Hq, D], sequences packed, with qo_indptr int32 [B + 1]
      k_cache      [num_pages, page_size, Hkv, D] ("NHD") or [num_pages, Hkv, page_size, D] ("HND");
      v_cache      the same shape up to its head dim Dv (K and V may be two views of one combined cache)
      block_table  int32 [B, max_pages]: the page ids of each sequence, in order
      kv_lens      int32 [B]: valid keys of each sequence (its last page may be partly filled)
    Semantics as prefill(): query i of sequence b sees key j iff j <= i + kv_lens[b] - qo_len_b
    (causal), so the queries are the last tokens of their sequence's keys. Cache slots past
    kv_lens[b] and pages the block table does not name are never read. chunk_size, sinks, the
    fp8 arguments (an fp8 cache: k_scale / v_scale, per tensor or per KV head) as in prefill(),
    and so are out= and lse= (the op attn::prefill_paged.out).
    """
    kwargs = dict(kv_layout=kv_layout, causal=causal, sm_scale=sm_scale, window_left=window_left,
                  chunk_size=chunk_size, logits_soft_cap=logits_soft_cap, sinks=sinks, q_scale=q_scale,
                  k_scale=k_scale, v_scale=v_scale, out_dtype=out_dtype)
    if out is None and lse is None:
        out, lse = _prefill_paged_op(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, **kwargs)
    else:
        _check_out_kwargs("prefill_paged", out, lse, return_lse)
        _prefill_paged_out_op(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, **kwargs, out=out, lse=lse)
    return (out, lse) if return_lse else out


def merge_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Attention over the union of two disjoint key sets from the two partial results
    (out [..., H, D], natural-log lse [..., H] as prefill returns them). A part with
    lse = -inf (no key seen) counts for nothing. Returns (out, lse).

    Shared-prefix (cascade) attention: attend to the shared prefix once, to each
    suffix separately, and merge. With attention sinks, give the sinks to exactly one of
    the parts (the sink is one more key: counted twice, it would weigh twice)."""
    return _merge_states_op(out_a, lse_a, out_b, lse_b)


def block_table_from_flashinfer(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, last_page_len: torch.Tensor,
                                page_size: int, max_pages: int | None = None):
    """FlashInfer's paged layout (kv_indptr [B + 1] into kv_indices, the page ids, and
    last_page_len [B]) -> (block_table int32 [B, max_pages], kv_lens int32 [B]).

    Device ops only when max_pages is given; without it the widest row is read back
    from the device (a host sync), so pass it in CUDA graphs."""
    num_pages = (kv_indptr[1:] - kv_indptr[:-1]).to(torch.int64)
    if max_pages is None:
        max_pages = int(num_pages.max().item()) if num_pages.numel() else 0
    kv_lens = torch.where(num_pages > 0, (num_pages - 1) * page_size + last_page_len.to(torch.int64), 0)
    column = torch.arange(max_pages, device=kv_indptr.device)
    index = kv_indptr[:-1].to(torch.int64).unsqueeze(1) + column
    named = column < num_pages.unsqueeze(1)
    pages = kv_indices[index.clamp(max=max(kv_indices.numel() - 1, 0))] if kv_indices.numel() else index * 0
    block_table = torch.where(named, pages, 0).to(torch.int32)
    return block_table, kv_lens.to(torch.int32)
