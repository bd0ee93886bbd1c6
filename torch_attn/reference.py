"""A float64 reference of attn.prefill, written for clarity, not speed (tests and demo)."""
from __future__ import annotations

import math

import torch


def visible_mask(qo_len: int, kv_len: int, causal: bool, window_left: int, chunk_size: int = 0,
                 device=None) -> torch.Tensor:
    """[qo_len, kv_len] bool: query i sees key j (bottom-right aligned causal, sliding window, chunks)."""
    i = torch.arange(qo_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    last = i + (kv_len - qo_len)
    visible = torch.ones(qo_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= last
    if window_left >= 0:
        visible &= j >= last - window_left
    if chunk_size > 0:
        visible &= torch.div(j, chunk_size, rounding_mode="floor") == torch.div(last, chunk_size, rounding_mode="floor")
    return visible


def attend_one(q, k, v, *, causal, sm_scale, window_left, logits_soft_cap, chunk_size=0, sinks=None,
               compute_dtype=torch.float64):
    """q [Sq, Hq, D], k [Skv, Hkv, D], v [Skv, Hkv, Dv] -> out [Sq, Hq, Dv], lse [Sq, Hq].

    compute_dtype float64 gives the reference; the inputs' own dtype gives the
    "same computation in PyTorch at the input dtype" that FlashAttention's tests
    use as the yardstick for rounding error (softmax then runs in float32).
    """
    qo_len, num_qo_heads, _ = q.shape
    kv_len, num_kv_heads = k.shape[0], k.shape[1]
    group = num_qo_heads // num_kv_heads
    qd = q.to(compute_dtype).transpose(0, 1)  # [Hq, Sq, D]
    kd = k.to(compute_dtype).transpose(0, 1).repeat_interleave(group, dim=0)
    vd = v.to(compute_dtype).transpose(0, 1).repeat_interleave(group, dim=0)
    softmax_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
    scores = (qd @ kd.transpose(1, 2)).to(softmax_dtype) * sm_scale  # [Hq, Sq, Skv]
    if logits_soft_cap > 0:
        scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
    visible = visible_mask(qo_len, kv_len, causal, window_left, chunk_size, q.device)
    scores = scores.masked_fill(~visible, -math.inf)
    if sinks is not None:  # one more key per row: logit sinks[h] as is, value 0
        sink_column = sinks.to(scores.dtype).view(-1, 1, 1).expand(-1, qo_len, 1)
        scores = torch.cat([scores, sink_column], dim=-1)
    lse = torch.logsumexp(scores, dim=-1)  # -inf for rows that see nothing
    weights = torch.exp(scores - lse.unsqueeze(-1).masked_fill(torch.isinf(lse.unsqueeze(-1)), 0))
    weights = weights[..., :kv_len]  # the sink's value is 0
    out = torch.nan_to_num(weights, nan=0.0).to(compute_dtype) @ vd
    return out.transpose(0, 1), lse.transpose(0, 1)


def prefill_reference(q, k, v, *, causal=False, sm_scale=None, window_left=-1, chunk_size=0, logits_soft_cap=0.0,
                      qo_indptr=None, kv_indptr=None, sinks=None, compute_dtype=torch.float64):
    """Same arguments and shapes as torch_attn.prefill; returns (out, lse) in compute_dtype."""
    sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    kwargs = dict(causal=causal, sm_scale=sm_scale, window_left=window_left, chunk_size=chunk_size,
                  logits_soft_cap=logits_soft_cap, sinks=sinks, compute_dtype=compute_dtype)
    out = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=compute_dtype, device=q.device)
    lse = torch.full(q.shape[:-1], -math.inf, dtype=torch.float64, device=q.device)
    if qo_indptr is not None:
        qo, kv = qo_indptr.tolist(), kv_indptr.tolist()
        for b in range(len(qo) - 1):
            if qo[b + 1] > qo[b]:
                out[qo[b]:qo[b + 1]], lse[qo[b]:qo[b + 1]] = attend_one(
                    q[qo[b]:qo[b + 1]], k[kv[b]:kv[b + 1]], v[kv[b]:kv[b + 1]], **kwargs)
    elif q.dim() == 4:
        for b in range(q.shape[0]):
            out[b], lse[b] = attend_one(q[b], k[b], v[b], **kwargs)
    else:
        out, lse = attend_one(q, k, v, **kwargs)
    return out, lse
