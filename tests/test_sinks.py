"""Attention sinks (gpt-oss, MiMo): per query head one more key whose logit is sinks[h], taken
as is, and whose value is 0. Against the float64 reference (the sink as one more score column),
on the CPU path (CI) and both CUDA kernels (marked), over masks, GQA, rows that see no key,
ragged and paged batches, poisoned memory and the wgmma kernel's tail split."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import (HAS_GPU, check_against_reference, indptr_of, make_qkv, mask_kwargs, poison_cuda_allocator,
                      poisoned_view, ragged_batch)
from test_paged import paged_cache, wgmma_takes_page_size

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
MASKS = [dict(causal=False), dict(causal=True), dict(causal=True, window_left=40),
         dict(causal=False, logits_soft_cap=20.0, sm_scale=0.3)]
LENGTHS = [(1, 1), (77, 77), (200, 50), (129, 1000), (1000, 1000)]  # (200, 50) causal: rows that see no key


def sinks_for(heads, device, dtype=torch.float32, scale=2.0, generator=None):
    return (scale * torch.randn(heads, generator=generator)).to(device=device, dtype=dtype)


def run(device, q, k, v, **kwargs):
    if device == "cuda":
        poison_cuda_allocator((q.shape, q.dtype), (q.shape[:-1], torch.float32))
    return torch_attn.prefill(q, k, v, return_lse=True, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS, ids=["full", "causal", "window", "softcap"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
def test_dense_matches_reference(device, mask, lengths, head_dim):
    gen = torch.Generator().manual_seed(head_dim + lengths[0])
    q, k, v = make_qkv(*lengths, 8, 2, head_dim, torch.bfloat16, device, generator=gen)
    kwargs = dict(mask_kwargs(mask), sinks=sinks_for(8, device, generator=gen))
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_without_keys_get_the_sink(device):
    """out = 0 and lse = sinks[h] where a row sees no key (causal, more queries than keys; no keys at all)."""
    sinks = torch.tensor([0.5, -3.0, 7.0, 0.0], device=device)
    q, k, v = make_qkv(50, 10, 4, 2, 64, torch.float16, device)
    out, lse = run(device, q, k, v, causal=True, sinks=sinks)
    assert (out[:40] == 0).all() and torch.equal(lse[:40], sinks.expand(40, 4))
    q, k, v = make_qkv(5, 0, 4, 2, 64, torch.float16, device)
    out, lse = run(device, q, k, v, sinks=sinks)
    assert (out == 0).all() and torch.equal(lse, sinks.expand(5, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sink", [60.0, -60.0, -math.inf], ids=["dominant", "negligible", "none"])
def test_extreme_sinks(device, sink):
    """A sink far above the logits takes nearly all the weight (out ~ 0, lse ~ sink) without
    overflow; one far below, or -inf, changes nothing."""
    q, k, v = make_qkv(130, 300, 4, 4, 128, torch.bfloat16, device)
    sinks = torch.full((4,), sink, device=device)
    out, lse = run(device, q, k, v, causal=True, sinks=sinks)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    check_against_reference(out, lse, q, k, v, causal=True, sinks=sinks)
    if sink == -math.inf:
        plain_out, plain_lse = run(device, q, k, v, causal=True)
        torch.testing.assert_close(out, plain_out, atol=0, rtol=0)
        torch.testing.assert_close(lse, plain_lse, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_sinks_in_the_parameter_dtype(device, dtype):
    """transformers keeps the sinks in the model's dtype: they are read as float32."""
    q, k, v = make_qkv(40, 40, 4, 1, 64, torch.bfloat16, device)
    sinks = sinks_for(4, device, dtype)
    out, lse = run(device, q, k, v, causal=True, sinks=sinks)
    check_against_reference(out, lse, q, k, v, causal=True, sinks=sinks.float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
def test_ragged_batch_with_empty_sequences_and_poisoned_tails(device, causal):
    qo_lens, kv_lens = [17, 0, 1, 130, 5, 64], [17, 9, 0, 300, 0, 64]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, 128, torch.bfloat16, device)
    if device == "cuda":  # K/V views into buffers whose rows past the last sequence hold NaN
        buf = torch.full((2, k.shape[0] + 64, 2, 128), math.nan, dtype=k.dtype, device=device)
        buf[0, :k.shape[0]], buf[1, :k.shape[0]] = k, v
        k, v = buf[0, :k.shape[0]], buf[1, :k.shape[0]]
    kwargs = dict(causal=causal, qo_indptr=qo_indptr, kv_indptr=kv_indptr, sinks=sinks_for(8, device))
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size,layout", [(16, "NHD"), (64, "HND"), (1, "NHD"), (48, "HND")])
def test_paged_cache(device, page_size, layout, cuda_backend):
    """Pages of 16 and 64 run on the wgmma kernel's copy engine, 1 and 48 on the mma.sync kernel."""
    if device == "cuda" and cuda_backend == "sm90" and not wgmma_takes_page_size(page_size):
        pytest.skip(f"the wgmma kernel refuses pages of {page_size} (auto runs them on the mma.sync kernel)")
    qo_lens, kv_lens = [20, 1, 130], [37, 200, 130]
    k_cache, v_cache, block_table, kv_lens_t, keys, values = paged_cache(kv_lens, page_size, layout, 2, 128,
                                                                         torch.bfloat16, device)
    q = torch.randn(sum(qo_lens), 8, 128, device=device).to(torch.bfloat16)
    qo_indptr = indptr_of(qo_lens, device)
    sinks = sinks_for(8, device)
    out, lse = torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens_t, kv_layout=layout,
                                        causal=True, sinks=sinks, return_lse=True)
    check_against_reference(out, lse, q, keys, values, qo_indptr=qo_indptr, kv_indptr=indptr_of(kv_lens, device),
                            causal=True, sinks=sinks)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_states_with_the_sink_in_one_part(device):
    """Split into key parts, the sink goes to exactly one of them: merged, that is the whole."""
    q, k, v = make_qkv(60, 500, 8, 2, 64, torch.bfloat16, device)
    sinks = sinks_for(8, device)
    whole, whole_lse = torch_attn.prefill(q, k, v, sinks=sinks, return_lse=True)
    a, a_lse = torch_attn.prefill(q, k[:200], v[:200], sinks=sinks, return_lse=True)
    b, b_lse = torch_attn.prefill(q, k[200:], v[200:], return_lse=True)
    merged, merged_lse = torch_attn.merge_states(a, a_lse, b, b_lse)
    torch.testing.assert_close(merged.float(), whole.float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(merged_lse, whole_lse, atol=1e-3, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
@pytest.mark.parametrize("few", [False, True], ids=["last-round", "fewer-items-than-SMs"])
def test_tail_split_adds_the_sink_once(few, cuda_backend, monkeypatch):
    """Items of equal cost that the wgmma kernel runs as pieces of their keys: the sink enters
    after the pieces are merged, once."""
    monkeypatch.setenv("TORCH_ATTN_TAIL_SPLIT", "1")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    items_per_seq = math.ceil(200 / 128) * 16
    batch = max(1, sms // 2 // items_per_seq) if few else sms // items_per_seq + 1
    q = torch.randn(batch, 200, 16, 128, device="cuda").to(torch.bfloat16)
    k = poisoned_view(batch, 8193, 4, 128, torch.bfloat16, math.nan, extra_rows=70)
    v = poisoned_view(batch, 8193, 4, 128, torch.bfloat16, math.nan, extra_rows=70)
    sinks = sinks_for(16, "cuda", scale=4.0)
    out, lse = run("cuda", q, k, v, sinks=sinks)
    check_against_reference(out, lse, q, k, v, sinks=sinks)
