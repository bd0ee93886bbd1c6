"""The CPU path against the float64 reference over an awkward grid (runs in CI)."""
from __future__ import annotations

import pytest
import torch

import torch_attn
from conftest import check_against_reference, make_qkv, mask_kwargs, ragged_batch

LENGTHS = [(1, 1), (239, 1), (113, 203), (128, 217), (1023, 1024)]
HEAD_DIMS = [64, 80, 96, 128, 256]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
GROUPS = [1, 4, 8]
MASKS = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, window_left=64),
    dict(causal=False, logits_soft_cap=30.0),
    dict(causal=True, window_left=5, logits_soft_cap=10.0, sm_scale=0.25),
    dict(causal=False, window_left=0),
]
CASES = [(lengths, head_dim, i) for i, (lengths, head_dim) in enumerate((n, d) for n in LENGTHS for d in HEAD_DIMS)]


@pytest.mark.parametrize("lengths,head_dim,index", CASES, ids=[f"{n[0]}x{n[1]}-d{d}" for n, d, _ in CASES])
def test_matches_reference(lengths, head_dim, index):
    # dtype, GQA ratio and mask rotate over the grid (coprime periods: every pair meets).
    dtype, group, mask = DTYPES[index % 3], GROUPS[(index // 3) % 3], MASKS[index % len(MASKS)]
    num_kv_heads = 1 if lengths[0] > 1000 else 2
    q, k, v = make_qkv(*lengths, num_kv_heads * group, num_kv_heads, head_dim, dtype, "cpu")
    kwargs = mask_kwargs(mask)
    out, lse = torch_attn.prefill(q, k, v, return_lse=True, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("mask", MASKS[:3])
def test_ragged_batch_with_empty_sequences(mask):
    qo_lens, kv_lens = [17, 0, 1, 130, 0, 64], [17, 9, 0, 300, 0, 64]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, 64, torch.bfloat16, "cpu")
    kwargs = dict(mask_kwargs(mask), qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    out, lse = torch_attn.prefill(q, k, v, return_lse=True, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


def test_dense_batch_and_strided_views():
    qkv = torch.randn(2, 150, 3, 4, 64, dtype=torch.bfloat16)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # only the last dim is contiguous
    out, lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


def test_rows_that_see_no_key():
    q, k, v = make_qkv(50, 10, 4, 4, 64, torch.float32, "cpu")
    out, lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
    assert torch.isneginf(lse[:40]).all() and (out[:40] == 0).all() and torch.isfinite(lse[40:]).all()
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


def test_empty_sequences_and_tensors():
    q, k, v = make_qkv(0, 4, 2, 1, 64, torch.float32, "cpu")
    out, lse = torch_attn.prefill(q, k, v, return_lse=True)
    assert out.shape == (0, 2, 64) and lse.shape == (0, 2)
    q, k, v = make_qkv(3, 0, 2, 1, 64, torch.float32, "cpu")
    out, lse = torch_attn.prefill(q, k, v, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_long_causal_prefill_is_not_absurdly_slow():
    """The brief: a 1 x 2k x 16 x 128 causal prefill in a few seconds on the CPU path."""
    import time

    q, k, v = make_qkv(2048, 2048, 16, 16, 128, torch.bfloat16, "cpu", batch=1)
    start = time.perf_counter()
    torch_attn.prefill(q, k, v, causal=True)
    assert time.perf_counter() - start < 30  # generous bound for a loaded 2-core CI machine


@pytest.mark.parametrize("dims", [(512, 512), (264, 264), (512, 128), (136, 512)], ids=lambda d: f"{d[0]}-{d[1]}")
def test_head_dims_past_256(dims):
    """Gemma 4's global layers (512) and widths past the CUDA kernels' 256 run on the CPU path, q . k and
    P V each at their own width, under GQA, a causal mask, a window and sinks."""
    q, k, v = make_qkv(77, 300, 8, 2, dims[0], torch.bfloat16, "cpu", head_dim_v=dims[1])
    sinks = torch.randn(8)
    kwargs = dict(causal=True, sm_scale=None, window_left=100, logits_soft_cap=0.0, sinks=sinks)
    out, lse = torch_attn.prefill(q, k, v, return_lse=True, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)
