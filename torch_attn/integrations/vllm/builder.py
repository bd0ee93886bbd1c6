"""vLLM's per-batch CommonAttentionMetadata -> TorchAttnMetadata, for one KV-cache group."""
from __future__ import annotations

from typing import ClassVar

import torch
from vllm.v1.attention.backend import AttentionCGSupport, AttentionMetadataBuilder, CommonAttentionMetadata

from .paged_attention import TorchAttnMetadata


class TorchAttnMetadataBuilder(AttentionMetadataBuilder[TorchAttnMetadata]):
    # prefill_paged plans its launch from shapes and reads lengths and pages on the device, and its
    # out= form allocates nothing: a captured graph replays any batch of its shape, mixed or not.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS
    # The metadata is vLLM's persistent buffers themselves: a draft step has nothing to refresh.
    supports_draft_decode_metadata_update = True

    def __init__(self, kv_cache_spec, layer_names: list[str], vllm_config, device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> TorchAttnMetadata:
        """No device work and no host read of device data: the batch's tensors pass through as they are."""
        common = common_attn_metadata
        if isinstance(common.causal, torch.Tensor):
            raise NotImplementedError("torch_attn vLLM backend: per-request causal flags (a tensor "
                                      "CommonAttentionMetadata.causal) are not supported, one flag per batch is")
        return TorchAttnMetadata(query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
                                 block_table=common.block_table_tensor, causal=common.causal)

    def update_draft_decode_metadata(self, metadata: TorchAttnMetadata) -> None:
        pass
