"""One layer's attention over vLLM's paged KV cache: the per-batch metadata and the prefill_paged call.
No vLLM import (tests/vllm_replay.py runs this on a GPU without vLLM).

vLLM's batch maps onto prefill_paged one to one: query_start_loc is qo_indptr, seq_lens (keys of each
request, the new tokens included) is kv_lens, the block table is the block table. The op aligns
causal queries bottom-right (query i of a request sees key j iff j <= i + seq_len - query_len), which
is vLLM's "the queries are the last tokens": a prefill, a chunked prefill after cached tokens and a
one-token decode row are all the same case, so a mixed batch is one call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import torch_attn


@dataclass
class TorchAttnMetadata:
    """What forward needs of a batch; the tensors are vLLM's own persistent buffers (no copies), so
    a captured CUDA graph reads each replay's batch from them."""

    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]: request r's queries are rows [qsl[r], qsl[r + 1])
    seq_lens: torch.Tensor  # int32 [num_reqs]: keys of request r, cached and new
    block_table: torch.Tensor  # int32 [num_reqs, max_blocks]: request r's cache blocks, in order
    causal: bool


@dataclass(frozen=True)
class LayerOptions:
    """A layer's fixed attention arguments, in prefill_paged's terms."""

    sm_scale: float
    window_left: int = -1  # vLLM's sliding_window W: a query sees itself and the W - 1 keys before it
    logits_soft_cap: float = 0.0
    sinks: torch.Tensor | None = None  # [num_heads] (gpt-oss)


def attend(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, metadata: TorchAttnMetadata,
           options: LayerOptions, output: torch.Tensor, k_scale: torch.Tensor | None = None,
           v_scale: torch.Tensor | None = None) -> None:
    """query [tokens, Hq, D] over the "HND" cache views into output [tokens, Hq, Dv] (vLLM's buffer).
    Rows past query_start_loc[-1] (CUDA-graph padding) are neither read nor written. fp8 caches
    (float8_e4m3fn / float8_e5m2 views) take the layer's descale factors k_scale / v_scale (float32,
    per tensor or [Hkv]: the real value is code * scale, read on the device per call); query stays in
    the model's dtype and so does the output."""
    torch_attn.prefill_paged(query, k_cache, v_cache, metadata.query_start_loc, metadata.block_table,
                             metadata.seq_lens, kv_layout="HND", causal=metadata.causal, sm_scale=options.sm_scale,
                             window_left=options.window_left, logits_soft_cap=options.logits_soft_cap,
                             sinks=options.sinks, k_scale=k_scale, v_scale=v_scale, out=output)
