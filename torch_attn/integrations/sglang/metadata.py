"""A batch's lengths and page table for prefill_paged, from SGLang's ForwardBatch tensors and its
req_to_token table. No SGLang import (tests/test_sglang_replay.py runs this without SGLang).

SGLang's req_to_token [max_reqs, max_context_len] (int32) holds, per request slot, the pool slot of
each token. Its allocator hands out whole pages of page_size slots, so a request's tokens p*P..p*P+P-1
sit in one page, slots page*P..page*P+P-1, in order: every P-th entry divided by P is the request's
page table. With page size 1 the row itself is the page table. The queries of a request are the last
extend_seq_lens of its seq_lens keys, which is prefill_paged's bottom-right causal alignment: a
prefill, an extend over a cached prefix and a decode row are one case.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TorchAttnMetadata:
    """What a layer's forward reads of a batch: prefill_paged's qo_indptr, kv_lens and block table."""

    qo_indptr: torch.Tensor  # int32 [bs + 1]: request r's queries are rows [qo_indptr[r], qo_indptr[r + 1])
    kv_lens: torch.Tensor  # int32 [bs]: keys of request r, cached and new
    page_table: torch.Tensor  # int32 [bs, pages]: request r's pool pages, in order


def page_table(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, page_size: int,
               max_tokens: int | None = None) -> torch.Tensor:
    """[bs, ceil(max_tokens / page_size)] int32 pages of each request (device ops only). max_tokens:
    the widest request's tokens, read from SGLang's host copy of seq_lens (no device sync); None
    takes the whole row (a fixed width, for CUDA graphs)."""
    rows = req_to_token[req_pool_indices]
    if max_tokens is not None:
        rows = rows[:, :max_tokens]
    if page_size == 1:
        return rows.to(torch.int32)
    return torch.div(rows[:, ::page_size], page_size, rounding_mode="floor").to(torch.int32)


def extend_metadata(extend_seq_lens: torch.Tensor, seq_lens: torch.Tensor, req_to_token: torch.Tensor,
                    req_pool_indices: torch.Tensor, page_size: int, max_tokens: int | None = None) -> TorchAttnMetadata:
    """EXTEND and MIXED batches: extend_seq_lens new tokens per request after seq_lens - extend_seq_lens
    cached ones (a decode row of a mixed batch: one new token)."""
    qo_indptr = torch.nn.functional.pad(torch.cumsum(extend_seq_lens, 0, dtype=torch.int32), (1, 0))
    return TorchAttnMetadata(qo_indptr, seq_lens.to(torch.int32),
                             page_table(req_to_token, req_pool_indices, page_size, max_tokens))


def decode_metadata(seq_lens: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                    page_size: int, max_tokens: int | None = None) -> TorchAttnMetadata:
    """DECODE batches: one query per request, its last key."""
    qo_indptr = torch.arange(seq_lens.shape[0] + 1, dtype=torch.int32, device=seq_lens.device)
    return TorchAttnMetadata(qo_indptr, seq_lens.to(torch.int32),
                             page_table(req_to_token, req_pool_indices, page_size, max_tokens))


class GraphMetadata:
    """Fixed buffers for CUDA graphs: a captured graph reads its batch from them, and fill() (recorded
    in the graph, as SGLang's init_forward_metadata_in_graph is) refreshes them at each replay from
    SGLang's own static batch tensors. The page table spans the whole req_to_token row."""

    def __init__(self, max_bs: int, req_to_token: torch.Tensor, page_size: int):
        device = req_to_token.device
        pages = -(-req_to_token.shape[1] // page_size)
        self.qo_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=device)
        self.decode_qo_indptr = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.kv_lens = torch.zeros(max_bs, dtype=torch.int32, device=device)
        self.page_table = torch.zeros(max_bs, pages, dtype=torch.int32, device=device)

    def fill(self, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
             page_size: int, extend_seq_lens: torch.Tensor | None = None) -> TorchAttnMetadata:
        """Views of the buffers for a batch of seq_lens.shape[0] requests, filled in place (no allocation
        that outlives the call, no host read). extend_seq_lens None: a decode batch."""
        bs = seq_lens.shape[0]
        self.kv_lens[:bs].copy_(seq_lens)
        self.page_table[:bs].copy_(page_table(req_to_token, req_pool_indices, page_size))
        if extend_seq_lens is None:
            return TorchAttnMetadata(self.decode_qo_indptr[:bs + 1], self.kv_lens[:bs], self.page_table[:bs])
        self.qo_indptr[1:bs + 1].copy_(torch.cumsum(extend_seq_lens, 0))
        return TorchAttnMetadata(self.qo_indptr[:bs + 1], self.kv_lens[:bs], self.page_table[:bs])
