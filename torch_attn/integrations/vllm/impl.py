"""The attention layer's implementation: the KV-cache write and the forward of one layer."""
from __future__ import annotations

import os

import torch
import vllm.envs as envs
from vllm.v1.attention.backend import AttentionImpl, AttentionLayer, AttentionType

from .kv_cache import kv_cache_views, write_kv_cache
from .paged_attention import LayerOptions, TorchAttnMetadata, attend
from .support import FP8_HEAD_SIZE_MULTIPLE, FP8_KV_CACHE_DTYPES, HEAD_SIZES, KV_CACHE_DTYPES


class TorchAttnImpl(AttentionImpl[TorchAttnMetadata]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 alibi_slopes: list[float] | None, sliding_window: int | None, kv_cache_dtype: str,
                 logits_soft_cap: float | None = None, attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, sinks: torch.Tensor | None = None) -> None:
        # Refused by name here rather than computed wrong later.
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise NotImplementedError(f"torch_attn vLLM backend: kv_cache_dtype={kv_cache_dtype!r} is not supported "
                                      f"(of the quantized KV caches only per-tensor fp8 is wired to the ops); use "
                                      f"one of {list(KV_CACHE_DTYPES)}")
        if head_size not in HEAD_SIZES:
            raise ValueError(f"torch_attn vLLM backend: head_size must be a multiple of 8 from 8 to 512, got "
                             f"{head_size}")
        # fp8 caches: the codes' format, read through views of vLLM's uint8 allocation (None: the model dtype).
        self.fp8_dtype = FP8_KV_CACHE_DTYPES.get(kv_cache_dtype)
        if self.fp8_dtype is not None:
            if head_size % FP8_HEAD_SIZE_MULTIPLE:
                raise ValueError(f"torch_attn vLLM backend: kv_cache_dtype={kv_cache_dtype!r} needs a head_size that "
                                 f"is a multiple of {FP8_HEAD_SIZE_MULTIPLE}, got {head_size}")
            if self.fp8_dtype == torch.float8_e4m3fn:
                from vllm.platforms import current_platform

                # vLLM's cache write stores "fp8" / "fp8_e4m3" in the platform's e4m3 (ROCm's may be e4m3fnuz).
                if current_platform.fp8_dtype() != torch.float8_e4m3fn:
                    raise NotImplementedError(f"torch_attn vLLM backend: kv_cache_dtype={kv_cache_dtype!r} is "
                                              f"{current_platform.fp8_dtype()} on this platform; the ops read "
                                              f"float8_e4m3fn and float8_e5m2")
        if alibi_slopes is not None:
            raise NotImplementedError("torch_attn vLLM backend: ALiBi (alibi_slopes) is not supported")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"torch_attn vLLM backend: attn_type '{attn_type}' is not supported, only "
                                      f"decoder attention over the paged KV cache")
        self.num_heads, self.head_size, self.scale, self.num_kv_heads = num_heads, head_size, float(scale), num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        # What vLLM's reshape_and_cache_flash is told: the fp8 format to quantize to, else "auto" (a plain copy).
        self.cache_write_dtype = kv_cache_dtype if self.fp8_dtype is not None else "auto"
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.sinks = sinks
        # sinks as the layer's weight itself (loaded into it later): the op reads its current values.
        self.options = LayerOptions(sm_scale=self.scale,
                                    window_left=-1 if sliding_window is None else sliding_window - 1,
                                    logits_soft_cap=float(logits_soft_cap or 0.0), sinks=sinks)
        if envs.VLLM_BATCH_INVARIANT:
            # The op's batch-invariant mode (read per call): a request's bits independent of its batch.
            os.environ["TORCH_ATTN_BATCH_INVARIANT"] = "1"

    def do_kv_cache_update(self, layer: AttentionLayer, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """vLLM calls this before forward (the backend's forward_includes_kv_cache_update is False). fp8
        caches get the codes of key / layer._k_scale and value / layer._v_scale."""
        k_cache, v_cache = kv_cache_views(kv_cache, self.head_size, self.fp8_dtype)
        write_kv_cache(key, value, k_cache, v_cache, slot_mapping, layer._k_scale, layer._v_scale,
                       self.cache_write_dtype)

    def forward(self, layer: AttentionLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: TorchAttnMetadata, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """query [tokens, Hq, D] over the cache (this step's keys already written) into output
        [tokens, Hq, D]; key and value are not read. An fp8 cache is read with the layer's k_scale /
        v_scale (its current values: vLLM loads them after building the layer); query is not quantized
        (supports_quant_query_input stays False), so the layer's q_scale is not used."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("torch_attn vLLM backend: fused output quantization is not supported")
        if attn_metadata is None:  # vLLM's profiling run
            return output.fill_(0)
        k_cache, v_cache = kv_cache_views(kv_cache, self.head_size, self.fp8_dtype)
        scales = (layer._k_scale, layer._v_scale) if self.fp8_dtype is not None else (None, None)
        attend(query, k_cache, v_cache, attn_metadata, self.options, output, *scales)
        return output
