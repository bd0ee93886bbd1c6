"""Hugging Face transformers models with their attention run by torch.ops.attn.prefill.

    import torch_attn.integrations.transformers   # registers "torch_attn" (register() does it again)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="torch_attn")

What the attention interface hands over, and how it maps onto the op:
  - query / key [B, Hq or Hkv, S, D], value [B, Hkv, Skv, Dv] (views; GQA as is; MLA's Dv != D
    as is), with Skv >= Sq
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
  - Chunked layers (Llama 4's attention_chunk_size): the mask interface finds the chunked
    overlay in the mask function and hands over a ChunkedMask; the op's chunk_size then
    counts positions from each row's first real key, transformers from the row's first
    token. Where the cache dropped keys (kv_offset) by a shift that is not whole chunks,
    the row's keys are cut where its first chunk ends, into two segments.
  - Packed sequences handed over as FlashAttention's `cu_seq_lens_q` / `cu_seq_lens_k`
    (batch 1, no padding mask) become the op's qo_indptr / kv_indptr.
Nothing that changes the result is dropped: a keyword the interface passes that we do
not implement (a `position_bias`, ...) or a mask pattern beyond causal / bidirectional /
left sliding window / chunks (packed by position ids, custom and/or masks) raises a
ValueError that names it (UNSUPPORTED says why), instead of returning plausible but wrong
numbers; so do, on CUDA, head dims past the kernels' 256 (Gemma 4's global layers, 512: they
run on the CPU path).
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
    "packed_sequence_mask_function": "sequences packed by their position_ids: pass cu_seq_lens_q / cu_seq_lens_k "
                                     "(FlashAttention's packed format) or a padded batch instead",
    "blockwise_overlay": "block-wise bidirectional overlays are not supported",
    "sliding_window_bidirectional_overlay": "bidirectional sliding windows are not supported (only windows to the "
                                            "left of each query)",
    "or_mask": "a mask built with or_masks (a union of patterns) is not supported",
}
# Mask functions whose pattern the op computes from its own arguments (causal, window, chunks).
UNDERSTOOD_MASKS = frozenset({"causal_mask_function", "bidirectional_mask_function", "sliding_window_overlay",
                              "chunked_overlay"})


class ChunkedMask:
    """What the mask interface hands the attention function of a chunked layer (Llama 4): the
    2-D padding mask of the keys (None: no padding), the chunk size, and where the chunks start:
    transformers counts positions from each row's first real token (left_padding [B]) and the
    keys the cache holds from absolute position kv_offset (a chunked layer's cache keeps only
    the last chunk_size - 1 keys)."""

    def __init__(self, padding, chunk_size: int, left_padding: torch.Tensor, kv_offset: int):
        self.padding, self.chunk_size, self.left_padding, self.kv_offset = padding, chunk_size, left_padding, kv_offset


def _unsupported(what: str) -> ValueError:
    return ValueError(f"torch_attn attention: {what!r}: {UNSUPPORTED[what]}")


def _closure(function) -> dict:
    return dict(zip(function.__code__.co_freevars, (cell.cell_contents for cell in function.__closure__ or ())))


def _check_mask_function(mask_function) -> dict:
    """Walks transformers' composed mask function (and_masks of patterns) and refuses any
    pattern the op would not reproduce from causal / sliding_window / chunks. Returns the
    chunked overlay's closure ({"chunk_size", "left_padding"}), or {} without one."""
    name = mask_function.__qualname__.split(".<locals>")[0]
    if name == "and_masks":
        found = {}
        for parts in _closure(mask_function).values():
            for part in parts if isinstance(parts, tuple) else ():
                found |= _check_mask_function(part)
        return found
    if name == "or_masks":
        raise _unsupported("or_mask")
    if name in UNSUPPORTED:
        raise _unsupported(name)
    if name not in UNDERSTOOD_MASKS:
        raise ValueError(f"torch_attn attention: the mask function {mask_function.__qualname__!r} is not one "
                         "torch_attn reproduces (causal, bidirectional, sliding window to the left, chunks)")
    return _closure(mask_function) if name == "chunked_overlay" else {}


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 **kwargs):
    """The mask interface: the 2-D boolean padding mask sliced to the keys, or None, after
    checking that the mask pattern is one the op reproduces; a ChunkedMask for chunked layers."""
    chunked = _check_mask_function(mask_function) if mask_function is not None else {}
    padding = None if attention_mask is None else attention_mask[:, -kv_length:].bool()
    if chunked:
        return ChunkedMask(padding, int(chunked["chunk_size"]), chunked["left_padding"], int(kv_offset))
    return padding


def ragged_segments(padding: torch.Tensor, q_length: int, chunk_size: int = 0,
                    key_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """padding [B, Skv] bool (True = a real token) -> (qo_indptr, kv_indptr), int32 on the
    mask's device: per row the segments (padding before, valid tokens, padding after) of the
    flattened [B * Sq] queries and [B * Skv] keys, 3B + 1 entries. With chunk_size > 0 and
    key_positions [B] (the model's position of each row's key 0), the valid tokens are cut
    where their first chunk ends, 4B + 1 entries: the op counts a segment's chunks from its
    first key, so each part's chunks then start where the model's do. Device ops only."""
    batch, kv_length = padding.shape
    valid = padding.sum(-1)
    start = torch.where(valid > 0, padding.int().argmax(-1), torch.zeros_like(valid))  # first real token
    end = start + valid
    offset = kv_length - q_length  # the queries are the last q_length key positions
    bounds = [start, end]
    if chunk_size > 0:
        split = start + (chunk_size - (key_positions.to(start.device) + start) % chunk_size) % chunk_size
        bounds = [start, torch.minimum(split, end), end]
    kv_ends = torch.stack([*bounds, torch.full_like(start, kv_length)], dim=-1)
    q_ends = (kv_ends - offset).clamp(0, q_length)
    kv_lens = torch.diff(kv_ends, dim=-1, prepend=torch.zeros_like(start)[:, None]).reshape(-1)
    q_lens = torch.diff(q_ends, dim=-1, prepend=torch.zeros_like(start)[:, None]).reshape(-1)

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
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    options = dict(causal=bool(causal), sm_scale=scaling, window_left=sliding_window - 1 if sliding_window else -1,
                   logits_soft_cap=float(softcap or 0.0), sinks=s_aux)
    batch, num_qo_heads, q_length, head_dim = query.shape
    kv_length, num_kv_heads, head_dim_v = key.shape[2], key.shape[1], value.shape[-1]  # MLA: head_dim_v differs
    segment_options = {}
    if isinstance(attention_mask, ChunkedMask):
        # transformers counts positions from each row's first real token, and the cache holds
        # keys from kv_offset on (ragged_segments aligns the op's chunks to that).
        options["chunk_size"] = attention_mask.chunk_size
        segment_options = dict(chunk_size=attention_mask.chunk_size,
                               key_positions=attention_mask.kv_offset - attention_mask.left_padding)
        attention_mask = attention_mask.padding
        if attention_mask is None:
            attention_mask = torch.ones(batch, kv_length, dtype=torch.bool, device=query.device)
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
    qo_indptr, kv_indptr = ragged_segments(attention_mask.bool(), q_length, **segment_options)
    out = torch_attn.prefill(q.reshape(batch * q_length, num_qo_heads, head_dim),
                             k.reshape(batch * kv_length, num_kv_heads, head_dim),
                             v.reshape(batch * kv_length, num_kv_heads, head_dim_v),
                             qo_indptr=qo_indptr, kv_indptr=kv_indptr, **options)
    return out.view(batch, q_length, num_qo_heads, head_dim_v), None


def register() -> None:
    """Registers NAME with transformers' attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, padding_mask)


register()
