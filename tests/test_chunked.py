"""Chunked local attention (chunk_size, Llama 4): query i sees key j only if both lie in one chunk of
chunk_size absolute key positions (bottom-right, as causal counts them), with causal, a window, sinks,
MLA head dims; dense, batched, ragged and paged. Against the float64 reference on the CPU path (CI) and
on both CUDA kernels (marked), with outputs poisoned before the call and key tiles wholly outside every
row's chunk poisoned with NaN: they must be skipped, not loaded and masked. The CUDA kernels have no
variant with both chunks and a soft cap (no model has both): there the CPU path runs it, CUDA refuses."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import HAS_GPU, check_against_reference, make_qkv, mask_kwargs, poison_cuda_allocator, ragged_batch
from test_paged import run_paged_case, wgmma_takes_page_size

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
MASKS = [dict(causal=True), dict(causal=False), dict(causal=True, window_left=90), dict(causal=False, window_left=5)]
CHUNKS = [1, 7, 64, 100, 128, 1000, 8192]
LENGTHS = [(1, 1), (65, 65), (200, 50), (300, 1000), (1000, 1000), (129, 4097)]


def run(device, q, k, v, **kwargs):
    if device == "cuda":
        poison_cuda_allocator(((*q.shape[:-1], v.shape[-1]), q.dtype), (q.shape[:-1], torch.float32))
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
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256, 512])
def test_batched_every_head_dim(device, head_dim):
    """[B, S, H, D] inputs, chunks that cut tiles of every kernel width off-centre."""
    q, k, v = make_qkv(700, 1500, 16, 4, head_dim, torch.float16, device, batch=3)
    for mask, chunk in ((dict(causal=True), 333), (dict(causal=False), 96)):
        kwargs = dict(mask_kwargs(mask), chunk_size=chunk)
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
def test_queries_before_key_0_see_nothing(device):
    """More queries than keys: a query at a negative position lies in a chunk without keys, even
    without a causal mask: out = 0, lse = -inf (the sink's logit with sinks)."""
    q, k, v = make_qkv(300, 100, 4, 2, 64, torch.bfloat16, device)
    out, lse = run(device, q, k, v, chunk_size=1000)
    assert (out[:200] == 0).all() and torch.isneginf(lse[:200]).all()
    check_against_reference(out, lse, q, k, v, chunk_size=1000)
    sinks = torch.tensor([0.5, -3.0, 7.0, 0.0], device=device)
    out, lse = run(device, q, k, v, chunk_size=64, sinks=sinks)
    assert (out[:200] == 0).all() and torch.equal(lse[:200], sinks.expand(200, 4))
    check_against_reference(out, lse, q, k, v, chunk_size=64, sinks=sinks)


@pytest.mark.parametrize("device", DEVICES)
def test_with_sinks_and_mla(device):
    q, k, v = make_qkv(333, 1111, 8, 2, 192, torch.bfloat16, device, head_dim_v=128)
    kwargs = dict(causal=True, chunk_size=256, sinks=torch.randn(8, device=device))
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_ragged_batch(device):
    qo_lens, kv_lens = [7, 0, 129, 1, 700, 64], [7, 40, 1000, 65, 700, 30]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, 128, torch.bfloat16, device)
    for mask, chunk in ((dict(causal=True), 64), (dict(causal=False), 300), (dict(causal=True, window_left=20), 32)):
        kwargs = dict(mask_kwargs(mask), chunk_size=chunk, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
        out, lse = run(device, q, k, v, **kwargs)
        check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size,layout", [(16, "NHD"), (64, "HND"), (48, "NHD")])
def test_paged_cache(device, page_size, layout, cuda_backend):
    case = dict(group=4, head_dim=128, mask=dict(causal=True, chunk_size=256), dtype=torch.bfloat16)
    lens = ([7, 65, 1, 300, 1000], [7, 300, 129, 1520, 3000])
    if device == "cuda" and cuda_backend == "sm90" and not wgmma_takes_page_size(page_size):
        with pytest.raises(ValueError, match="TORCH_ATTN_BACKEND=sm90: the wgmma kernel takes paged caches"):
            run_paged_case(device, page_size, layout, *lens, **case)
        return
    run_paged_case(device, page_size, layout, *lens, **case)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_keys_outside_the_chunk_are_skipped(device, causal, head_dim):
    """Queries that all lie in the last chunk [3072, 4096): K/V before it are NaN. A kernel (or the
    CPU path) that loaded those tiles and masked them would compute 0 * NaN = NaN."""
    q, k, v = make_qkv(64, 4096, 8, 2, head_dim, torch.bfloat16, device)
    k[:3072], v[:3072] = math.nan, math.nan
    out, lse = run(device, q, k, v, causal=causal, chunk_size=1024)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref_out, ref_lse = run(device, q[:], k[3072:].clone(), v[3072:].clone(), causal=causal)
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_with_soft_cap(device):
    """The CPU path runs chunks with a soft cap; the CUDA kernels refuse the pair by name."""
    q, k, v = make_qkv(200, 500, 4, 2, 64, torch.bfloat16, device)
    kwargs = dict(causal=True, chunk_size=100, logits_soft_cap=30.0)
    if device == "cuda":
        with pytest.raises(ValueError, match="chunk_size and logits_soft_cap do not combine"):
            run(device, q, k, v, **kwargs)
        return
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)
