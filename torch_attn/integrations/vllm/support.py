"""What the backend takes, from what torch_attn's ops take (README, API), stated once for the
backend's declarations to vLLM and the impl's refusals. No vLLM import."""
from __future__ import annotations

import torch

HEAD_SIZES = tuple(range(8, 257, 8))  # csrc/prefill_checks.cpp: multiples of 8 from 8 to 256 (the tiles cover all)
DTYPES = (torch.float16, torch.bfloat16)  # the CUDA kernels' (the CPU path takes float32 as well)
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16")  # the model's dtype: prefill_paged takes the cache in q's dtype
MIN_COMPUTE_CAPABILITY = (8, 0)  # the mma.sync kernel runs from sm_80


def cache_dtype_mismatch(kv_cache_dtype: str | None, dtype: torch.dtype) -> str | None:
    """Why an explicit cache dtype cannot serve a model of `dtype` (None: it can)."""
    named = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(kv_cache_dtype or "auto")
    if named is None or named == dtype:
        return None
    return f"kv_cache_dtype {kv_cache_dtype} differs from the model dtype {dtype} (the cache must hold the model dtype)"
