"""Python wrappers of the attn ops: keyword arguments, optional LSE, inference-only guard."""
from __future__ import annotations

import torch

_prefill_op = torch.ops.attn.prefill.default


def _reject_grad(*tensors: torch.Tensor) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            "torch_attn is inference-only (its ops have no backward): call it under torch.no_grad() or "
            "torch.inference_mode(), or pass detached tensors")


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
    window_left: int = -1,
    logits_soft_cap: float = 0.0,
    qo_indptr: torch.Tensor | None = None,
    kv_indptr: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Attention of q over k/v for prefill.

    Shapes (the last dim must be contiguous; other strides are free):
      one sequence:      q [Sq, Hq, D],        k/v [Skv, Hkv, D]
      dense batch:       q [B, Sq, Hq, D],     k/v [B, Skv, Hkv, D]
      ragged batch:      q [total_q, Hq, D],   k/v [total_kv, Hkv, D],
                         qo_indptr / kv_indptr int32 [B + 1] (cu_seqlens) on q's device
    Hq must be a multiple of Hkv (GQA/MQA); D a multiple of 8 up to 256.

    Semantics: scores s = sm_scale * q.k (sm_scale defaults to 1/sqrt(D)); with
    logits_soft_cap > 0, s = cap * tanh(s / cap). Causal is bottom-right aligned:
    query i of a sequence sees key j iff j <= i + Skv - Sq; window_left >= 0 also
    hides keys j < i + Skv - Sq - window_left. A query that sees no key gets out = 0
    and lse = -inf.

    Returns out (q's shape and dtype), and with return_lse also lse (float32,
    natural log, q's shape without D).
    """
    _reject_grad(q, k, v)
    out, lse = _prefill_op(q, k, v, qo_indptr, kv_indptr, causal=causal, sm_scale=sm_scale,
                           window_left=window_left, logits_soft_cap=logits_soft_cap)
    return (out, lse) if return_lse else out
