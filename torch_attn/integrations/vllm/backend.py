"""The backend class vLLM selects (--attention-backend TORCH_ATTN): what it declares vLLM checks a
model's layers against before choosing it (AttentionBackend.validate_configuration)."""
from __future__ import annotations

from typing import ClassVar

import torch
from vllm.platforms.interface import DeviceCapability
from vllm.v1.attention.backend import AttentionBackend, MultipleOf

from . import NAME
from .builder import TorchAttnMetadataBuilder
from .impl import TorchAttnImpl
from .support import DTYPES, HEAD_SIZES, KV_CACHE_DTYPES, MIN_COMPUTE_CAPABILITY, unsupported_combination


class TorchAttnBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(DTYPES)
    # The model's dtype, or fp8 (fp8 / fp8_e4m3 / fp8_e5m2) with per-tensor scales: per-head scales
    # (a compressed-tensors attn_head checkpoint) are not declared (supports_per_head_quant_scales is
    # False, vLLM's default), nor the other quantized caches.
    supported_kv_cache_dtypes: ClassVar[list[str]] = list(KV_CACHE_DTYPES)
    # vLLM writes the cache through impl.do_kv_cache_update before forward; forward reads only
    # the cache, so it also runs where a fused op wrote the cache and passes no key/value.
    forward_includes_kv_cache_update: bool = False
    supports_kv_cache_update_bypass: bool = True

    @staticmethod
    def get_name() -> str:
        return NAME

    @staticmethod
    def get_impl_cls() -> type[TorchAttnImpl]:
        return TorchAttnImpl

    @staticmethod
    def get_builder_cls() -> type[TorchAttnMetadataBuilder]:
        return TorchAttnMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        # prefill_paged takes any page size (the wgmma kernel pages of 8, 16, 32, ...; mma.sync the rest).
        return [MultipleOf(1)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(HEAD_SIZES)

    @classmethod
    def supported_kv_cache_layouts(cls):
        # Any: the cache views keep vLLM's strides, and prefill_paged takes any with a contiguous head dim.
        return None

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_batch_invariance(cls) -> bool:
        return True  # the impl turns on TORCH_ATTN_BATCH_INVARIANT when vLLM's mode is on

    @classmethod
    def supports_compute_capability(cls, capability: DeviceCapability) -> bool:
        return capability >= DeviceCapability(*MIN_COMPUTE_CAPABILITY)

    @classmethod
    def supports_combination(cls, head_size, dtype, kv_cache_dtype, block_size, use_mla, has_sink, use_sparse,
                             use_mm_prefix, device_capability) -> str | None:
        return unsupported_combination(kv_cache_dtype, dtype, head_size)
