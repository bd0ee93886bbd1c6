"""One layer's attention over SGLang's token-to-KV pool: the pool's buffers as paged caches and the
prefill_paged call. No SGLang import (tests/test_sglang_replay.py runs this without SGLang).

SGLang's MHATokenToKVPool keeps each layer's keys and values token-major, [slots, heads, head_dim]
("nhd"; slot s is token s % P of page s // P), or page-major [pages, heads, page_size, head_dim]
("hnd", SGLANG_USE_HND_KVCACHE=1). Both are prefill_paged caches as they are: the first viewed as
[pages, page_size, heads, head_dim] ("NHD"), the second read as "HND". No copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import torch_attn

from .metadata import TorchAttnMetadata

POOL_LAYOUTS = {"nhd": "NHD", "hnd": "HND"}  # SGLang's kv_cache_layout -> prefill_paged's kv_layout


def paged_cache(buffer: torch.Tensor, page_size: int, pool_layout: str) -> torch.Tensor:
    """A layer's key or value buffer as a prefill_paged cache in POOL_LAYOUTS[pool_layout]. A token-major
    buffer's rows past its last whole page are never a request's (SGLang allocates whole pages)."""
    if pool_layout == "hnd":
        return buffer
    pages = buffer.shape[0] // page_size
    return buffer[:pages * page_size].unflatten(0, (pages, page_size))


@dataclass(frozen=True)
class LayerOptions:
    """A RadixAttention layer's fixed arguments, in prefill_paged's terms."""

    sm_scale: float
    window_left: int = -1  # SGLang's sliding_window_size W: a query sees itself and the W keys before it
    logits_soft_cap: float = 0.0  # SGLang's logit_cap (tanh capping)
    chunk_size: int = 0  # Llama 4's attention_chunk_size, on its chunked (use_irope) layers


def attend(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_layout: str,
           metadata: TorchAttnMetadata, options: LayerOptions, output: torch.Tensor, sinks: torch.Tensor | None = None,
           k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """query [tokens, Hq, D] over the paged caches (this step's keys already written) into output
    [tokens, Hq, Dv]. Rows past qo_indptr[-1] are neither read nor written. sinks [Hq]: gpt-oss's
    per-head logits. An fp8 pool (float8_e4m3fn / float8_e5m2 views) takes the layer's per-tensor
    k_scale / v_scale (float32, None: 1); query and output stay in the model's dtype."""
    torch_attn.prefill_paged(query, k_cache, v_cache, metadata.qo_indptr, metadata.page_table, metadata.kv_lens,
                             kv_layout=kv_layout, causal=True, sm_scale=options.sm_scale,
                             window_left=options.window_left, logits_soft_cap=options.logits_soft_cap,
                             chunk_size=options.chunk_size, sinks=sinks, k_scale=k_scale, v_scale=v_scale, out=output)
