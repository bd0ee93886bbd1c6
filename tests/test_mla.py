"""Different head dims for q . k and v (MLA prefill: DeepSeek-V3's 192 / 128) against the float64
reference: dense, ragged and paged, masks, GQA, rows that see no key, the default scale, and poisoned
memory past each tensor's own head dim. CPU cases run in CI; the same cases run on both CUDA kernels
(marked)."""
from __future__ import annotations

import math
import re

import pytest
import torch

import torch_attn
from conftest import (HAS_GPU, check_against_reference, make_qkv, mask_kwargs, poison_cuda_allocator,
                      poisoned_view, prefill_kernels_launched, ragged_batch)
from test_paged import run_paged_case, wgmma_takes_page_size

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
# (D_qk, D_v): DeepSeek-V3 / Kimi-K2 / GLM, narrower and wider V, widths off the compiled tiles.
HEAD_DIMS = [(192, 128), (128, 64), (64, 128), (72, 40), (256, 128), (128, 256), (40, 200), (512, 128), (136, 512),
             (320, 448)]
MASKS = [dict(causal=True), dict(causal=False), dict(causal=True, window_left=50),
         dict(causal=False, logits_soft_cap=30.0, sm_scale=0.15)]
LENGTHS = [(1, 1), (63, 65), (200, 50), (129, 1000), (1000, 1000)]


def run(device, q, k, v, **kwargs):
    if device == "cuda":
        poison_cuda_allocator(((*q.shape[:-1], v.shape[-1]), q.dtype), (q.shape[:-1], torch.float32))
    return torch_attn.prefill(q, k, v, return_lse=True, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", HEAD_DIMS, ids=[f"{a}-{b}" for a, b in HEAD_DIMS])
@pytest.mark.parametrize("lengths", LENGTHS, ids=[f"{a}x{b}" for a, b in LENGTHS])
def test_dense_matches_reference(device, dims, lengths):
    index = HEAD_DIMS.index(dims) + LENGTHS.index(lengths)
    gen = torch.Generator().manual_seed(index)
    group = (1, 4, 8)[index % 3]
    q, k, v = make_qkv(*lengths, 2 * group, 2, dims[0], torch.bfloat16, device, batch=2, generator=gen,
                       head_dim_v=dims[1])
    kwargs = mask_kwargs(MASKS[index % len(MASKS)])
    out, lse = run(device, q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_default_scale_is_that_of_q_k(device, dtype):
    """sm_scale defaults to 1/sqrt(D_qk), never 1/sqrt(D_v)."""
    if device == "cuda" and dtype == torch.float32:
        pytest.skip("float32 runs on CPU only")
    q, k, v = make_qkv(77, 130, 4, 2, 192, dtype, device, head_dim_v=128)
    out, lse = run(device, q, k, v, causal=True)
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=1 / math.sqrt(192))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [(192, 128), (64, 256)], ids=["192-128", "64-256"])
def test_ragged_batch(device, dims):
    qo_lens, kv_lens = [7, 0, 129, 1, 300], [7, 40, 1000, 65, 300]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, dims[0], torch.float16, device,
                                                 head_dim_v=dims[1])
    for mask in MASKS[:3]:
        kwargs = dict(mask_kwargs(mask), qo_indptr=qo_indptr, kv_indptr=kv_indptr)
        out, lse = run(device, q, k, v, **kwargs)
        check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size,layout", [(16, "NHD"), (64, "HND"), (48, "NHD")])
@pytest.mark.parametrize("dims", [(192, 128), (128, 64)], ids=["192-128", "128-64"])
def test_paged_cache(device, page_size, layout, dims, cuda_backend):
    """K and V caches with their own head dims, as two views of one cache whose columns past each
    view's head dim (and unused slots) hold NaN."""
    if device == "cuda" and cuda_backend == "sm90" and not wgmma_takes_page_size(page_size):
        pytest.skip("the wgmma kernel takes pages of 8, 16, 32, ... rows (test_paged covers the refusal)")
    qo_lens, kv_lens = [7, 65, 1, 300], [7, 300, 129, 520]
    run_paged_case(device, page_size, layout, qo_lens, kv_lens, group=4, head_dim=dims[0], mask=dict(causal=True),
                   dtype=torch.bfloat16, head_dim_v=dims[1])


@pytest.mark.gpu
@pytest.mark.parametrize("poison", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dims", [(192, 128), (128, 192), (96, 64)], ids=["192-128", "128-192", "96-64"])
def test_poison_past_each_head_dim(poison, dims):
    """q, k and v as views of buffers whose rows past the sequence and columns past the view's own
    head dim (up to the widest tile, 256) hold NaN or inf: none of it may reach out."""
    dqk, dv = dims
    q = poisoned_view(2, 300, 8, dqk, torch.bfloat16, poison, extra_rows=64, width=256)
    k = poisoned_view(2, 700, 2, dqk, torch.bfloat16, poison, extra_rows=64, width=256)
    v = poisoned_view(2, 700, 2, dv, torch.bfloat16, poison, extra_rows=64, width=256)
    for mask in (dict(causal=True), dict(causal=False)):
        out, lse = run("cuda", q, k, v, **mask_kwargs(mask))
        check_against_reference(out, lse, q, k, v, **mask_kwargs(mask))


@pytest.mark.gpu
def test_tail_split_with_a_narrower_v():
    """Few equal items (one sequence, no mask): the wgmma kernel splits the last round's K/V
    across SMs and merges the pieces; their partial outputs are the tile's width, out is D_v."""
    q, k, v = make_qkv(1000, 4097, 8, 8, 192, torch.bfloat16, "cuda", head_dim_v=128)
    out, lse = run("cuda", q, k, v)
    check_against_reference(out, lse, q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("dims,tile", [((192, 128), "192, 128"), ((160, 96), "192, 128"), ((192, 192), "192, 192"),
                                       ((128, 192), "192, 192"), ((128, 128), "128, 128")])
def test_wgmma_kernel_picks_the_narrowest_tile(dims, tile, cuda_backend):
    """MLA's (192, 128) runs on the wgmma tile whose P V is 128 wide, not on the 192-wide one."""
    if cuda_backend != "sm90":
        pytest.skip("the wgmma kernel's tiles")
    q, k, v = make_qkv(300, 300, 4, 4, dims[0], torch.bfloat16, "cuda", head_dim_v=dims[1])
    names = prefill_kernels_launched(lambda: torch_attn.prefill(q, k, v, causal=True))
    assert names and all(re.search(rf"PrefillSm90Traits<[^,<>]+, {tile}>", name) for name in names), names
