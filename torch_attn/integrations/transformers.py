"""Hugging Face transformers models with their attention run by torch.ops.attn.prefill.

    import torch_attn.integrations.transformers   # registers "torch_attn" (register() does it again)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="torch_attn")

What the attention interface hands over, and how it maps onto the op:
  - query [B, Hq, Sq, D], key / value [B, Hkv, Skv, D] (views; GQA as is), with Skv >= Sq
    when a KV cache holds earlier tokens: the op's bottom-right causal alignment is
    exactly "the queries are the last Sq positions".
  - `scaling` -> sm_scale, `sliding_window` W -> window_left = W - 1 (key j visible
    iff j > i - W), `softcap` -> logits_soft_cap, `module.is_causal` -> causal.
  - Padding: our mask interface passes the 2-D [B, Skv] padding mask through, like
    FlashAttention's, but without its host-side `.all()` check. The attention function
    turns it into a ragged batch on the device (no host sync): each row becomes three
    segments, padding before, the valid tokens, padding after, each a "sequence" of
    its own. The valid segments are computed exactly; the padding segments only attend
    among padding, and their outputs are ignored by the model as with any backend.
    This assumes what left- and right-padded batches look like: one contiguous run of
    valid tokens per row, ending where the queries end (left padding; right padding
    when Sq == Skv).
Inference only: call the model under torch.no_grad() / torch.inference_mode().
"""
from __future__ import annotations

import torch

import torch_attn

NAME = "torch_attn"


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 **kwargs):
    """The mask interface: the 2-D boolean padding mask sliced to the keys, or None."""
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:].bool()


def ragged_segments(padding: torch.Tensor, q_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """padding [B, Skv] bool (True = a real token) -> (qo_indptr, kv_indptr), int32 [3B + 1]
    on the mask's device: per row the segments (padding before, valid tokens, padding
    after) of the flattened [B * Sq] queries and [B * Skv] keys. Device ops only."""
    batch, kv_length = padding.shape
    valid = padding.sum(-1)
    start = torch.where(valid > 0, padding.int().argmax(-1), torch.zeros_like(valid))  # first real token
    end = start + valid
    offset = kv_length - q_length  # the queries are the last q_length key positions
    q_start = (start - offset).clamp(0, q_length)
    q_end = (end - offset).clamp(0, q_length)
    kv_lens = torch.stack([start, valid, kv_length - end], dim=-1).reshape(-1)
    q_lens = torch.stack([q_start, q_end - q_start, q_length - q_end], dim=-1).reshape(-1)

    def indptr(lens):
        return torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)

    return indptr(q_lens), indptr(kv_lens)


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                      softcap=None, **kwargs):
    """The attention interface: returns (attn_output [B, Sq, Hq, D], None)."""
    if dropout and module.training:
        raise ValueError("torch_attn attention is inference-only: dropout > 0 in training mode is not supported")
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    options = dict(causal=bool(causal), sm_scale=scaling, window_left=sliding_window - 1 if sliding_window else -1,
                   logits_soft_cap=float(softcap or 0.0))
    batch, num_qo_heads, q_length, head_dim = query.shape
    kv_length, num_kv_heads = key.shape[2], key.shape[1]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S, H, D] views
    if attention_mask is None:
        return torch_attn.prefill(q, k, v, **options), None
    if attention_mask.dim() != 2:
        raise ValueError(f"torch_attn attention takes the 2-D padding mask of its own mask interface or None, got a "
                         f"{attention_mask.dim()}-D mask: load the model with attn_implementation='torch_attn'")
    qo_indptr, kv_indptr = ragged_segments(attention_mask.bool(), q_length)
    out = torch_attn.prefill(q.reshape(batch * q_length, num_qo_heads, head_dim),
                             k.reshape(batch * kv_length, num_kv_heads, head_dim),
                             v.reshape(batch * kv_length, num_kv_heads, head_dim),
                             qo_indptr=qo_indptr, kv_indptr=kv_indptr, **options)
    return out.view(batch, q_length, num_qo_heads, head_dim), None


def register() -> None:
    """Registers NAME with transformers' attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, padding_mask)


register()
