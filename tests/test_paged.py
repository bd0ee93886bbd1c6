"""attn.prefill_paged and attn.merge_states against the float64 reference on the gathered
keys: page sizes, layouts, GQA, masks, poisoned unused slots, shared and shuffled pages.
CPU cases run in CI; the same cases run on the GPU (marked)."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import (HAS_GPU, check_against_reference, indptr_of, mask_kwargs, poison_cuda_allocator,
                      prefill_kernels_launched)

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
MASKS = [dict(causal=True), dict(causal=False), dict(causal=True, window_left=40),
         dict(causal=True, logits_soft_cap=25.0, sm_scale=0.2)]


def paged_cache(kv_lens, page_size, layout, num_kv_heads, head_dim, dtype, device, poison=math.nan, share_first=0,
                generator=None, head_dim_v=None):
    """K and V of every sequence written into shuffled pages of one combined cache
    (k_cache and v_cache are two views of it). Every slot no sequence owns holds
    `poison`; so do the columns past a view's head dim where K's (head_dim) and V's
    (head_dim_v) differ. share_first > 0: sequence 1 reuses sequence 0's first pages (a
    shared prefix). Returns the caches, block_table, kv_lens and the packed keys/values."""
    head_dim_v = head_dim_v or head_dim
    width = max(head_dim, head_dim_v)
    pages_per_seq = [(n + page_size - 1) // page_size for n in kv_lens]
    num_pages = sum(pages_per_seq) + 3  # spare pages nobody names
    shape = (num_pages, 2, page_size, num_kv_heads, width) if layout == "NHD" else \
        (num_pages, 2, num_kv_heads, page_size, width)
    cache = torch.full(shape, poison, dtype=dtype, device=device)
    order = torch.randperm(num_pages, generator=generator).tolist()
    block_table = torch.zeros(len(kv_lens), max(pages_per_seq + [1]) + 2, dtype=torch.int32)
    keys, values = [], []
    for b, (kv_len, n_pages) in enumerate(zip(kv_lens, pages_per_seq)):
        pages = [order.pop() for _ in range(n_pages)]
        if b == 1 and share_first:
            pages[:share_first] = block_table[0, :share_first].tolist()
        block_table[b, :n_pages] = torch.tensor(pages, dtype=torch.int32)
        block_table[b, n_pages:] = 10**6  # entries past the last page are garbage: never read
        k = torch.randn(kv_len, num_kv_heads, head_dim, generator=generator).to(dtype)
        v = torch.randn(kv_len, num_kv_heads, head_dim_v, generator=generator).to(dtype)
        for j in range(kv_len):
            page, slot = pages[j // page_size], j % page_size
            k_slot = cache[page, 0, slot] if layout == "NHD" else cache[page, 0, :, slot]
            v_slot = cache[page, 1, slot] if layout == "NHD" else cache[page, 1, :, slot]
            if b == 1 and j < share_first * page_size:  # shared: the keys are sequence 0's
                k[j], v[j] = k_slot[..., :head_dim], v_slot[..., :head_dim_v]
            else:
                k_slot[..., :head_dim], v_slot[..., :head_dim_v] = k[j], v[j]
        keys.append(k)
        values.append(v)
    kv_lens_t = torch.tensor(kv_lens, dtype=torch.int32, device=device)
    return (cache[:, 0, ..., :head_dim], cache[:, 1, ..., :head_dim_v], block_table.to(device), kv_lens_t,
            torch.cat(keys).to(device), torch.cat(values).to(device))


def run_paged_case(device, page_size, layout, qo_lens, kv_lens, group, head_dim, mask, dtype, poison=math.nan,
                   share_first=0, head_dim_v=None):
    gen = torch.Generator().manual_seed(page_size * 7 + len(qo_lens))
    num_kv_heads = 2
    k_cache, v_cache, block_table, kv_lens_t, keys, values = paged_cache(
        kv_lens, page_size, layout, num_kv_heads, head_dim, dtype, device, poison, share_first, gen, head_dim_v)
    q = torch.randn(sum(qo_lens), num_kv_heads * group, head_dim, generator=gen).to(device, dtype)
    qo_indptr = indptr_of(qo_lens, device)
    kwargs = mask_kwargs(mask)
    if device == "cuda":
        poison_cuda_allocator(((*q.shape[:-1], values.shape[-1]), q.dtype), (q.shape[:-1], torch.float32))
    out, lse = torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens_t, kv_layout=layout,
                                        return_lse=True, **kwargs)
    check_against_reference(out, lse, q, keys, values, qo_indptr=qo_indptr, kv_indptr=indptr_of(kv_lens, device),
                            **kwargs)


PAGE_CASES = [(ps, layout, i)
              for i, (ps, layout) in enumerate((p, lay) for p in (1, 16, 64, 256, 48) for lay in ("NHD", "HND"))]


def wgmma_takes_page_size(page_size: int) -> bool:
    """The wgmma kernel loads pages with the copy engine: powers of two from 8 rows."""
    return page_size >= 8 and page_size & (page_size - 1) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("page_size,layout,index", PAGE_CASES, ids=[f"page{p}-{lay}" for p, lay, _ in PAGE_CASES])
def test_matches_reference(device, page_size, layout, index, cuda_backend):
    # Sequences with cached prefixes (kv > q), an empty one, and lengths around tile and page edges.
    qo_lens, kv_lens = [7, 0, 65, 1, 120], [7, 33, 300, 129, 520]
    if device == "cuda":
        qo_lens, kv_lens = qo_lens + [1000, 1023], kv_lens + [1000, 1024]
    dtype = torch.bfloat16 if device == "cuda" or index % 2 else torch.float32
    case = dict(group=(1, 4, 8)[index % 3], head_dim=(64, 128, 80)[index % 3], mask=MASKS[index % len(MASKS)],
                dtype=dtype)
    if device == "cuda" and cuda_backend == "sm90" and not wgmma_takes_page_size(page_size):
        # Forced onto the wgmma kernel, other page sizes are refused (auto runs them on sm80).
        with pytest.raises(ValueError, match="TORCH_ATTN_BACKEND=sm90: the wgmma kernel takes paged caches"):
            run_paged_case(device, page_size, layout, qo_lens, kv_lens, **case)
        return
    run_paged_case(device, page_size, layout, qo_lens, kv_lens, **case)


@pytest.mark.gpu
@pytest.mark.parametrize("mask", [dict(causal=True), dict(causal=True, window_left=70),
                                  dict(causal=True, logits_soft_cap=30.0)])
@pytest.mark.parametrize("head_dim", [64, 256, 512])
def test_narrow_and_wide_heads_under_masks(head_dim, mask):
    """Head dims 64, 256 and 512 on a paged cache under a causal mask or window: the tiles where the
    wgmma kernel's consumer groups see different K/V tiles (and, at 256, stage out apart from Q), and the
    mma.sync kernel's split dims (512) with paged rows of two copy steps each."""
    run_paged_case("cuda", 16, "NHD", [7, 65, 1000, 300], [7, 300, 1000, 1200], group=4, head_dim=head_dim,
                   mask=mask, dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("page_size", [1, 48])
def test_auto_backend_runs_other_page_sizes_on_mma_sync(page_size, monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BACKEND", "auto")
    names = prefill_kernels_launched(lambda: run_paged_case("cuda", page_size, "NHD", [40, 300], [77, 300], group=4,
                                                            head_dim=128, mask=dict(causal=True),
                                                            dtype=torch.bfloat16))
    assert names and all("prefill_sm90_kernel" not in name for name in names), names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_poisoned_slots_and_shared_pages(device, poison):
    """Unused pages and the tail of each last page hold poison; two sequences share prefix pages."""
    run_paged_case(device, 16, "NHD", [40, 50], [77, 90], group=4, head_dim=128, mask=dict(causal=True),
                   dtype=torch.float16 if device == "cuda" else torch.float32, poison=poison, share_first=2)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_states_of_a_split_equals_the_whole(device):
    gen = torch.Generator().manual_seed(5)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(50, 8, 64, generator=gen).to(device, dtype)
    k = torch.randn(300, 2, 64, generator=gen).to(device, dtype)
    v = torch.randn(300, 2, 64, generator=gen).to(device, dtype)
    whole, whole_lse = torch_attn.prefill(q, k, v, return_lse=True)
    for split in (0, 1, 117, 299, 300):  # 0 and 300: one part sees no key (lse = -inf)
        a, lse_a = torch_attn.prefill(q, k[:split], v[:split], return_lse=True)
        b, lse_b = torch_attn.prefill(q, k[split:], v[split:], return_lse=True)
        out, lse = torch_attn.merge_states(a, lse_a, b, lse_b)
        torch.testing.assert_close(out.float(), whole.float(), atol=2e-2 if device == "cuda" else 1e-5, rtol=0)
        torch.testing.assert_close(lse, whole_lse, atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_cascade_shared_prefix_then_causal_suffix(device):
    """Shared-prefix attention: every query sees the whole prefix (no mask) plus its own
    suffix causally; merging the two parts equals causal attention over prefix + suffix."""
    gen = torch.Generator().manual_seed(6)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    prefix, suffix = 200, 70
    k = torch.randn(prefix + suffix, 2, 128, generator=gen).to(device, dtype)
    v = torch.randn(prefix + suffix, 2, 128, generator=gen).to(device, dtype)
    q = torch.randn(suffix, 8, 128, generator=gen).to(device, dtype)
    part_a = torch_attn.prefill(q, k[:prefix], v[:prefix], return_lse=True)
    part_b = torch_attn.prefill(q, k[prefix:], v[prefix:], causal=True, return_lse=True)
    out, lse = torch_attn.merge_states(*part_a, *part_b)
    whole, whole_lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
    torch.testing.assert_close(out.float(), whole.float(), atol=2e-2 if device == "cuda" else 1e-5, rtol=0)
    torch.testing.assert_close(lse, whole_lse, atol=1e-3, rtol=0)


def test_merge_states_of_two_empty_parts():
    out = torch.full((3, 2, 8), float("nan"))  # an empty part's out must not matter
    lse = torch.full((3, 2), -math.inf)
    merged, merged_lse = torch_attn.merge_states(out, lse, out, lse)
    assert (merged == 0).all() and torch.isneginf(merged_lse).all()


def test_block_table_from_flashinfer_layout():
    kv_indptr = torch.tensor([0, 3, 3, 4], dtype=torch.int32)
    kv_indices = torch.tensor([7, 2, 9, 4], dtype=torch.int32)
    last_page_len = torch.tensor([5, 0, 16], dtype=torch.int32)
    block_table, kv_lens = torch_attn.block_table_from_flashinfer(kv_indptr, kv_indices, last_page_len, page_size=16)
    assert block_table.tolist() == [[7, 2, 9], [0, 0, 0], [4, 0, 0]]
    assert kv_lens.tolist() == [37, 0, 16]
    block_table, _ = torch_attn.block_table_from_flashinfer(kv_indptr, kv_indices, last_page_len, 16, max_pages=5)
    assert block_table.shape == (3, 5)


def test_opcheck():
    k_cache, v_cache, block_table, kv_lens, _, _ = paged_cache([9, 20], 8, "HND", 2, 64, torch.float32, "cpu")
    q = torch.randn(12, 4, 64)
    qo_indptr = torch.tensor([0, 5, 12], dtype=torch.int32)
    torch.library.opcheck(torch.ops.attn.prefill_paged.default, (q, k_cache, v_cache, qo_indptr, block_table, kv_lens),
                          dict(kv_layout="HND", causal=True, sinks=torch.randn(4)))
    out, lse = torch.randn(5, 4, 64), torch.randn(5, 4)
    torch.library.opcheck(torch.ops.attn.merge_states.default, (out, lse, out.clone(), lse.clone()))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
def test_paged_cache_over_2_31_elements():
    """64-bit offsets: a cache of 2^31 + elements per K/V; the sequence uses the last pages."""
    num_pages, page_size, heads, head_dim = (2**31) // (16 * 8 * 128) + 64, 16, 8, 128
    k_cache = torch.empty(num_pages, page_size, heads, head_dim, dtype=torch.bfloat16, device="cuda").normal_()
    v_cache = torch.empty_like(k_cache).normal_()
    pages = torch.arange(num_pages - 20, num_pages, dtype=torch.int32, device="cuda")
    kv_len = 20 * page_size - 5
    q = torch.randn(100, 32, head_dim, dtype=torch.bfloat16, device="cuda")
    out, lse = torch_attn.prefill_paged(q, k_cache, v_cache, torch.tensor([0, 100], dtype=torch.int32, device="cuda"),
                                        pages[None], torch.tensor([kv_len], dtype=torch.int32, device="cuda"),
                                        causal=True, return_lse=True)
    keys = k_cache[num_pages - 20:].reshape(-1, heads, head_dim)[:kv_len]
    values = v_cache[num_pages - 20:].reshape(-1, heads, head_dim)[:kv_len]
    assert k_cache[num_pages - 20:].storage_offset() > 2**31
    check_against_reference(out, lse, q, keys, values, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)
