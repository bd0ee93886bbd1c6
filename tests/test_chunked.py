"""Chunked local attention (chunk_size, Llama 4): query i sees key j only if both lie in one chunk of
chunk_size absolute key positions (bottom-right, as causal counts them), with causal, a window, a soft
cap, sinks; dense, ragged and paged. Against the float64 reference on the CPU path (CI), where key blocks
wholly outside every row's chunk are never read (poisoned with NaN). The CUDA kernels refuse chunk_size
for now (a runtime branch for it made them spill; they need variants of their own)."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import HAS_GPU, check_against_reference, make_qkv, mask_kwargs, ragged_batch
from test_paged import run_paged_case

DEVICES = [pytest.param("cpu", id="cpu")]
MASKS = [dict(causal=True), dict(causal=False), dict(causal=True, window_left=90),
         dict(causal=True, logits_soft_cap=30.0)]
CHUNKS = [1, 7, 64, 100, 128, 1000, 8192]
LENGTHS = [(1, 1), (65, 65), (200, 50), (300, 1000), (1000, 1000), (129, 4097)]


def run(device, q, k, v, **kwargs):
    return torch_attn.prefill(q, k, v, return_lse=True, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("lengths", LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
def test_dense_matches_reference(device, chunk, lengths):
    index = CHUNKS.index(chunk) + LENGTHS.index(lengths)
    gen = torch.Generator().manual_seed(index)
    head_dim = (64, 128, 256, 80)[index % 4]
    q, k, v = make_qkv(*lengths, 8, (1, 2, 8)[index % 3], head_dim, torch.bfloat16, device, generator=gen)
    kwargs = dict(mask_kwargs(MASKS[index % len(MASKS)]), chunk_size=chunk)
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_chunk_past_every_position_changes_nothing(device):
    """A chunk that holds every key position is no mask (queries at positions >= 0)."""
    q, k, v = make_qkv(300, 700, 4, 2, 128, torch.float16, device)
    for causal in (True, False):
        plain = run(device, q, k, v, causal=causal)
        chunked = run(device, q, k, v, causal=causal, chunk_size=2**31 - 1)
        for a, b in zip(plain, chunked):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_with_sinks_and_mla(device):
    q, k, v = make_qkv(333, 1111, 8, 2, 192, torch.bfloat16, device, head_dim_v=128)
    kwargs = dict(causal=True, chunk_size=256, sinks=torch.randn(8, device=device))
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_ragged_batch(device):
    qo_lens, kv_lens = [7, 0, 129, 1, 700], [7, 40, 1000, 65, 700]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, 128, torch.bfloat16, device)
    for mask, chunk in ((dict(causal=True), 64), (dict(causal=False), 300), (dict(causal=True, window_left=20), 32)):
        kwargs = dict(mask_kwargs(mask), chunk_size=chunk, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
        out, lse = run(device, q, k, v, **kwargs)
        check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size,layout", [(16, "NHD"), (64, "HND"), (48, "NHD")])
def test_paged_cache(device, page_size, layout):
    run_paged_case(device, page_size, layout, [7, 65, 1, 300], [7, 300, 129, 1520], group=4, head_dim=128,
                   mask=dict(causal=True, chunk_size=256), dtype=torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [True, False])
def test_keys_outside_the_chunk_are_skipped(device, causal):
    """Queries that all lie in the last chunk [3072, 4096): K/V before it are NaN. A kernel (or the
    CPU path) that loaded those tiles and masked them would compute 0 * NaN = NaN."""
    q, k, v = make_qkv(64, 4096, 8, 2, 128, torch.bfloat16, device)
    k[:3072], v[:3072] = math.nan, math.nan
    out, lse = run(device, q, k, v, causal=causal, chunk_size=1024)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref_out, ref_lse = run(device, q[:], k[3072:].clone(), v[3072:].clone(), causal=causal)
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
def test_cuda_refuses_chunks_by_name():
    q, k, v = make_qkv(65, 65, 4, 2, 64, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="chunk_size > 0 \\(chunked attention\\) runs on CPU only"):
        torch_attn.prefill(q, k, v, causal=True, chunk_size=16)
