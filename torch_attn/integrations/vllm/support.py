"""What the backend takes, from what torch_attn's ops take (README, API), stated once for the
backend's declarations to vLLM and the impl's refusals. No vLLM import."""
from __future__ import annotations

import os

import torch

HEAD_SIZES = tuple(range(8, 513, 8))  # csrc/prefill_checks.cpp: multiples of 8 from 8 to 512 (the tiles cover all)
DTYPES = (torch.float16, torch.bfloat16)  # the CUDA kernels' (the CPU path takes float32 as well)
# vLLM's --kv-cache-dtype fp8 names -> the cache's fp8 format (vLLM allocates these caches as uint8: "fp8" is
# e4m3 on CUDA, vllm.platforms' fp8_dtype()). prefill_paged takes them under bf16/fp16 q with the layer's
# per-tensor k_scale / v_scale (real value = code * scale); the cache write quantizes with the same scales.
FP8_KV_CACHE_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# The model's dtype (prefill_paged takes an unquantized cache in q's dtype), or fp8.
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", *FP8_KV_CACHE_DTYPES)
FP8_HEAD_SIZE_MULTIPLE = 16  # the CUDA kernel's fp8 path (README, API: fp8 head dims must be multiples of 16)
MIN_COMPUTE_CAPABILITY = (8, 0)  # the mma.sync kernel runs from sm_80 (fp8 caches included)


def unsupported_combination(kv_cache_dtype: str | None, dtype: torch.dtype, head_size: int) -> str | None:
    """Why a cache dtype cannot serve a layer of `dtype` and `head_size` (None: it can)."""
    if kv_cache_dtype in FP8_KV_CACHE_DTYPES:
        if head_size % FP8_HEAD_SIZE_MULTIPLE:
            return (f"kv_cache_dtype {kv_cache_dtype} needs a head size that is a multiple of "
                    f"{FP8_HEAD_SIZE_MULTIPLE}, got {head_size}")
        if os.environ.get("TORCH_ATTN_BACKEND") == "sm90":
            return (f"kv_cache_dtype {kv_cache_dtype} with TORCH_ATTN_BACKEND=sm90: the wgmma kernel has no fp8 "
                    f"variant yet")
        return None
    named = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(kv_cache_dtype or "auto")
    if named is None or named == dtype:
        return None
    return f"kv_cache_dtype {kv_cache_dtype} differs from the model dtype {dtype} (the cache must hold the model dtype)"
