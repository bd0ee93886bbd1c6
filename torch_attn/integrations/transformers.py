"""Hugging Face transformers models with their attention run by torch.ops.attn.prefill.

    import torch_attn.integrations.transformers   # registers "torch_attn" (register() does it again)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="torch_attn")

What the attention interface hands over, and how it maps onto the op:
  - query [B, Hq, Sq, D], key / value [B, Hkv, Skv, D] (views; GQA as is), with Skv >= Sq
    when a KV cache holds earlier tokens: the op's bottom-right causal alignment is
    exactly "the queries are the last Sq positions".
  - `scaling` -> sm_scale, `sliding_window` W -> window_left = W - 1 (key j visible
    iff j > i - W), `softcap` -> logits_soft_cap, `module.is_causal` -> causal,
    `s_aux` (attention sinks: gpt-oss, MiMo) -> sinks.
  - Padding: our mask interface passes the 2-D [B, Skv] padding mask through, like
    FlashAttention's, but without its host-side `.all()` check. The attention function
    turns it into a ragged batch on the device (no host sync): each row becomes three
    segments, padding before, the valid tokens, padding after, each a "sequence" of
    its own. The valid segments are computed exactly; the padding segments only attend
    among padding, and their outputs are ignored by the model as with any backend.
    This assumes what left- and right-padded batches look like: one contiguous run of
    valid tokens per row, ending where the queries end (left padding; right padding
    when Sq == Skv).
  - Packed sequences handed over as FlashAttention's `cu_seq_lens_q` / `cu_seq_lens_k`
    (batch 1, no padding mask) become the op's qo_indptr / kv_indptr.
Nothing that changes the result is dropped: a keyword the interface passes that we do
not implement (a `position_bias`, ...), a mask pattern beyond
causal / bidirectional / left sliding window (chunked, packed by position ids, custom
and/or masks), or value head dims that differ from the query's raise a ValueError that
names it (UNSUPPORTED says why), instead of returning plausible but wrong numbers.
Inference only: call the model under torch.no_grad() / torch.inference_mode().
"""
from __future__ import annotations

import torch

import torch_attn

NAME = "torch_attn"


# Keywords of the attention interface that do not change the attention's result here.
IGNORED_KWARGS = frozenset({
    "position_ids", "cache_position", "use_cache", "past_key_values", "past_key_value", "output_attentions",
    "output_hidden_states", "output_router_logits", "num_items_in_batch", "return_dict", "seq_idx", "deterministic",
    "layer_idx", "query_length", "target_dtype",
})
# Keywords that change the result and that torch_attn does not implement yet, and why.
UNSUPPORTED = {
    "position_bias": "an additive position bias (T5-style relative attention) is not supported",
    "chunked_overlay": "chunked attention (Llama 4's attention_chunk_size) is not implemented yet",
    "packed_sequence_mask_function": "sequences packed by their position_ids: pass cu_seq_lens_q / cu_seq_lens_k "
                                     "(FlashAttention's packed format) or a padded batch instead",
    "blockwise_overlay": "block-wise bidirectional overlays are not supported",
    "sliding_window_bidirectional_overlay": "bidirectional sliding windows are not supported (only windows to the "
                                            "left of each query)",
    "or_mask": "a mask built with or_masks (a union of patterns) is not supported",
    "head_dim_v": "value head dims that differ from the query's (MLA: DeepSeek-V3, Kimi-K2) are not implemented yet",
}
# Mask functions whose pattern the op computes from its own arguments (causal, window).
UNDERSTOOD_MASKS = frozenset({"causal_mask_function", "bidirectional_mask_function", "sliding_window_overlay"})


def _unsupported(what: str) -> ValueError:
    return ValueError(f"torch_attn attention: {what!r}: {UNSUPPORTED[what]}")


def _check_mask_function(mask_function) -> None:
    """Walks transformers' composed mask function (and_masks of patterns) and refuses any
    pattern the op would not reproduce from causal / sliding_window."""
    name = mask_function.__qualname__.split(".<locals>")[0]
    if name == "and_masks":
        for cell in mask_function.__closure__ or ():
            parts = cell.cell_contents
            for part in parts if isinstance(parts, tuple) else ():
                _check_mask_function(part)
        return
    if name == "or_masks":
        raise _unsupported("or_mask")
    if name in UNSUPPORTED:
        raise _unsupported(name)
    if name not in UNDERSTOOD_MASKS:
        raise ValueError(f"torch_attn attention: the mask function {mask_function.__qualname__!r} is not one torch_attn "
                         "reproduces (causal, bidirectional, sliding window to the left)")


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 **kwargs):
    """The mask interface: the 2-D boolean padding mask sliced to the keys, or None, after
    checking that the mask pattern is one the op reproduces."""
    if mask_function is not None:
        _check_mask_function(mask_function)
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


def _check_kwargs(kwargs: dict) -> None:
    for name, value in kwargs.items():
        if value is None or name in IGNORED_KWARGS:
            continue
        if name in UNSUPPORTED:
            raise _unsupported(name)
        raise ValueError(f"torch_attn attention: the keyword {name!r} is not one torch_attn knows to leave the result "
                         "unchanged; it is refused rather than ignored")


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                      softcap=None, is_causal=None, s_aux=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                      max_length_q=None, max_length_k=None, **kwargs):
    """The attention interface: returns (attn_output [B, Sq, Hq, D], None)."""
    if dropout and module.training:
        raise ValueError("torch_attn attention is inference-only: dropout > 0 in training mode is not supported")
    _check_kwargs(kwargs)
    if value.shape[-1] != query.shape[-1]:
        raise _unsupported("head_dim_v")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    options = dict(causal=bool(causal), sm_scale=scaling, window_left=sliding_window - 1 if sliding_window else -1,
                   logits_soft_cap=float(softcap or 0.0), sinks=s_aux)
    batch, num_qo_heads, q_length, head_dim = query.shape
    kv_length, num_kv_heads = key.shape[2], key.shape[1]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S, H, D] views
    if cu_seq_lens_q is not None or cu_seq_lens_k is not None:
        # FlashAttention's packed format: one row of packed sequences, their boundaries given.
        if cu_seq_lens_q is None or cu_seq_lens_k is None or batch != 1 or attention_mask is not None:
            raise ValueError("torch_attn attention: packed sequences need both cu_seq_lens_q and cu_seq_lens_k, "
                             "batch size 1 and no padding mask")
        out = torch_attn.prefill(q[0], k[0], v[0], qo_indptr=cu_seq_lens_q.to(torch.int32),
                                 kv_indptr=cu_seq_lens_k.to(torch.int32), **options)
        return out[None], None
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
