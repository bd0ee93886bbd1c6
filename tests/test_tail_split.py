"""The wgmma kernel's tail split (csrc/kernels/common/tail_split.h): with work items of equal
cost, the items of the last round (or all of them, where there are fewer than SMs),
if at most half as many as SMs, run as pieces of their K/V tiles on the SMs that
would idle, and the last piece of each item merges them. Shapes here are sized from
the GPU's SM count so that a split happens (items long enough: a piece at least 32
tiles shorter than an item); that it did shows in the output's rounding
(TORCH_ATTN_TAIL_SPLIT=0 turns it off), that it is right against the float64 reference."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import check_against_reference, poison_cuda_allocator, poisoned_view

pytestmark = pytest.mark.gpu

# The wgmma kernel's query rows per work item, by head-dim tile (prefill_sm90_traits.cuh).
BLOCK_M = {64: 192, 128: 128, 256: 128}


def split_shape(head_dim, qo_len, num_qo_heads, fewer_items_than_sms=False):
    """A batch size whose items (batch x query tiles x heads) exceed the SMs by at most one
    sequence's items (a last round of 1 .. items-per-sequence items), or stay at most half of them."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    items_per_seq = math.ceil(qo_len / BLOCK_M[head_dim]) * num_qo_heads
    return max(1, sms // 2 // items_per_seq) if fewer_items_than_sms else sms // items_per_seq + 1


def run(q, k, v, split, monkeypatch, **kwargs):
    monkeypatch.setenv("TORCH_ATTN_TAIL_SPLIT", "1" if split else "0")
    poison_cuda_allocator((q.shape, q.dtype), (q.shape[:-1], torch.float32))
    return torch_attn.prefill(q, k, v, return_lse=True, **kwargs)


CASES = [
    # head_dim, qo_len (end-aligned tiles: the first starts before row 0), kv_len, heads q/kv, dtype, mask, few items
    (128, 200, 8193, (16, 4), torch.bfloat16, {}, False),
    (128, 64, 8193, (7, 7), torch.float16, {}, False),  # one item left over: 13 pieces of 5 tiles
    (64, 200, 8193, (8, 8), torch.bfloat16, dict(logits_soft_cap=30.0), False),
    (256, 100, 4097, (32, 4), torch.bfloat16, dict(sm_scale=0.05), False),
    (256, 300, 3000, (8, 1), torch.float16, {}, False),  # kv_len not a multiple of the 64-key tile
    (128, 100, 8193, (16, 4), torch.bfloat16, {}, True),  # fewer items than SMs: every item in pieces
]


@pytest.mark.parametrize("head_dim,qo_len,kv_len,heads,dtype,mask,few", CASES,
                         ids=[f"d{c[0]}-{c[1]}x{c[2]}-h{c[3][0]}/{c[3][1]}-{str(c[4])[6:]}{'-few' * c[6]}"
                              for c in CASES])
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_split_tail_matches_reference(head_dim, qo_len, kv_len, heads, dtype, mask, few, poison, cuda_backend,
                                      monkeypatch):
    batch = split_shape(head_dim, qo_len, heads[0], fewer_items_than_sms=few)
    q = torch.randn(batch, qo_len, heads[0], head_dim, device="cuda").to(dtype)
    k = poisoned_view(batch, kv_len, heads[1], head_dim, dtype, poison, extra_rows=70)
    v = poisoned_view(batch, kv_len, heads[1], head_dim, dtype, poison, extra_rows=70)
    kwargs = dict(causal=False, window_left=-1, logits_soft_cap=0.0, sm_scale=None)
    kwargs.update(mask)
    out, lse = run(q, k, v, True, monkeypatch, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)
    whole_out, whole_lse = run(q, k, v, False, monkeypatch, **kwargs)
    check_against_reference(whole_out, whole_lse, q, k, v, **kwargs)
    if cuda_backend == "sm90":  # the merged pieces round differently from one pass over the keys
        assert not torch.equal(lse, whole_lse), "the tail was not split"
    else:  # the mma.sync kernel has no persistent grid to split
        assert torch.equal(out, whole_out) and torch.equal(lse, whole_lse)


def test_split_tail_is_bitwise_deterministic(monkeypatch):
    """Whichever piece of an item comes last merges all of them in slot order: same bits every run."""
    batch = split_shape(128, 300, 16)
    q = torch.randn(batch, 300, 16, 128, device="cuda").bfloat16()
    k, v = (torch.randn(batch, 8193, 4, 128, device="cuda").bfloat16() for _ in range(2))
    first_out, first_lse = run(q, k, v, True, monkeypatch)
    for _ in range(5):
        out, lse = run(q, k, v, True, monkeypatch)
        assert torch.equal(out, first_out) and torch.equal(lse, first_lse)


def test_split_tail_under_cuda_graph_replay(monkeypatch):
    """The arrival counters and the pieces' workspace are set up on the stream: every replay starts clean."""
    monkeypatch.setenv("TORCH_ATTN_TAIL_SPLIT", "1")
    batch = split_shape(128, 128, 8)
    q = torch.randn(batch, 128, 8, 128, device="cuda").bfloat16()
    k, v = (torch.randn(batch, 6000, 8, 128, device="cuda").bfloat16() for _ in range(2))
    torch_attn.prefill(q, k, v)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = torch_attn.prefill(q, k, v, return_lse=True)
    for _ in range(3):
        q.copy_(torch.randn_like(q)), k.copy_(torch.randn_like(k)), v.copy_(torch.randn_like(v))
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference(out, lse, q, k, v, causal=False, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


def test_bad_tail_split_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_TAIL_SPLIT", "yes")
    q = torch.randn(1, 64, 4, 128, device="cuda").bfloat16()
    with pytest.raises(ValueError, match="TORCH_ATTN_TAIL_SPLIT: expected 0 or 1"):
        torch_attn.prefill(q, q, q)
