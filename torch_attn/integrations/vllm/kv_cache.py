"""vLLM's paged KV cache as torch_attn sees it, and writing new keys and values into it. No vLLM import.

vLLM hands each layer its cache as one logical [num_blocks, num_kv_heads, block_size, D + Dv] tensor
(K's head dim, then V's, per slot), whose physical order is whichever KVCacheLayout vLLM resolved
(NHD-like LBNHC, HND-like LBHNC, ...). Slicing the last dim gives K and V as "HND" views with those
strides; prefill_paged takes any strides with a contiguous last dim, so no layout is copied.

fp8 caches (--kv-cache-dtype fp8 / fp8_e4m3 / fp8_e5m2): vLLM allocates them as uint8 (or in the fp8
dtype); the views are retyped to the fp8 format (same bytes), and the write stores each key and value
as the fp8 code of x / scale (the layer's k_scale / v_scale, saturated to the format's finite range),
as vLLM's reshape_and_cache_flash does, so that code * scale is the value the attention reads.
"""
from __future__ import annotations

import functools

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)  # the cache formats prefill_paged reads


def kv_cache_views(kv_cache: torch.Tensor, head_size: int,
                   fp8_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[blocks, heads, block_size, D + Dv] -> k_cache [blocks, heads, block_size, D], v_cache [..., Dv]:
    views for prefill_paged(kv_layout="HND"). fp8_dtype: the cache holds fp8 codes (vLLM's uint8
    allocation), viewed as that dtype."""
    if fp8_dtype is not None and kv_cache.dtype != fp8_dtype:
        if kv_cache.element_size() != 1:
            raise ValueError(f"torch_attn vLLM backend: an fp8 KV cache must be allocated in 1-byte elements, got "
                             f"{kv_cache.dtype}")
        kv_cache = kv_cache.view(fp8_dtype)  # same bytes and strides
    return kv_cache[..., :head_size], kv_cache[..., head_size:]


def quantize_for_cache(x: torch.Tensor, fp8_dtype: torch.dtype, scale: torch.Tensor | None) -> torch.Tensor:
    """x [tokens, heads, D] as fp8 codes: x / scale in float32, saturated to the format's finite range
    (NaN stays NaN), rounded to nearest even. scale: float32 [] / [1] (per tensor) or [heads]; None is 1."""
    x = x.float()
    if scale is not None:
        x = x / scale.view(-1, 1)
    finite_max = torch.finfo(fp8_dtype).max
    return x.clamp(-finite_max, finite_max).to(fp8_dtype)


@functools.cache
def _vllm_cache_write(device_type: str):
    """vLLM's reshape_and_cache_flash where vLLM's kernels for this device type are loaded (its CUDA
    and ROCm builds, loaded before any model runs), else None (CPU, or a process without vLLM).
    Looked up once: the forward path runs per layer and step."""
    namespace = torch.ops._C_cache_ops
    if not hasattr(namespace, "reshape_and_cache_flash"):
        return None
    op = namespace.reshape_and_cache_flash.default
    return op if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), device_type.upper()) else None


def scatter_into_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                       v_scale: torch.Tensor | None = None) -> None:
    """Token t's key and value [heads, D] into slot slot_mapping[t] (block * block_size + offset) of
    the "HND" views; tokens past slot_mapping's length or with a negative slot (vLLM's PAD_SLOT_ID,
    CUDA-graph padding) are not written, as in vLLM's kernel. fp8 caches get quantize_for_cache's
    codes (with k_scale / v_scale); other caches the values as they are (the scales are not read).

    Pure torch and graph-safe (no host sync, fixed shapes): a padded token is sent to slot 0 of block
    0, which is vLLM's null block (never given to a request), and writes back what that slot holds."""
    num_tokens, block_size = slot_mapping.shape[0], k_cache.shape[2]
    padded = (slot_mapping < 0).view(-1, 1, 1)
    slots = slot_mapping.masked_fill(padded.view(-1), 0)
    blocks, offsets = slots // block_size, slots % block_size
    for cache, new, scale in ((k_cache, key[:num_tokens], k_scale), (v_cache, value[:num_tokens], v_scale)):
        if cache.dtype in FP8_DTYPES:  # the codes moved as bytes: indexing needs no fp8 kernels
            new, cache = quantize_for_cache(new, cache.dtype, scale).view(torch.uint8), cache.view(torch.uint8)
        tokens_first = cache.transpose(1, 2)  # [blocks, block_size, heads, D]: one slot is [heads, D]
        tokens_first[blocks, offsets] = torch.where(padded, tokens_first[blocks, offsets], new)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None, kv_cache_dtype: str = "auto") -> None:
    """key / value [tokens, Hkv, D / Dv] into the caches (kv_cache_views' views) by slot_mapping: with
    vLLM's own kernel where it is loaded (it takes vLLM's kv_cache_dtype name and the layer's k_scale /
    v_scale, 1 for unquantized caches), else by scatter_into_cache."""
    vllm_write = _vllm_cache_write(key.device.type)
    if vllm_write is None:
        scatter_into_cache(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale)
        return
    if k_cache.dtype in FP8_DTYPES:  # as vLLM's own backends hand it fp8 caches: its uint8 allocation
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    # vLLM's kernel takes the caches as [blocks, block_size, heads, D] views
    vllm_write(key, value, k_cache.transpose(1, 2), v_cache.transpose(1, 2), slot_mapping, kv_cache_dtype, k_scale,
               v_scale)
