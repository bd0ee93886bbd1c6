"""The CUDA kernel against the float64 reference: odd shapes, masks, GQA, poisoned memory."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import (check_against_reference, make_qkv, mask_kwargs, poison_cuda_allocator,
                      poisoned_view, prefill_kernels_launched, ragged_batch)

pytestmark = pytest.mark.gpu

LENGTHS = [(1, 1), (1, 333), (239, 1), (77, 77), (113, 203), (128, 217), (1000, 1000), (1023, 1024), (4097, 4097)]
HEAD_DIMS = [64, 80, 96, 128, 192, 256, 512]
GROUPS = [1, 4, 8]
MASKS = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, window_left=100),
    dict(causal=False, logits_soft_cap=30.0),
    dict(causal=True, window_left=37, logits_soft_cap=20.0, sm_scale=0.3),
]


def run_prefill(q, k, v, **kwargs):
    """Calls the op with its outputs' future memory poisoned, returns (out, lse)."""
    poison_cuda_allocator((q.shape, q.dtype), (q.shape[:-1], torch.float32))
    return torch_attn.prefill(q, k, v, return_lse=True, **kwargs)


CASES = [(lengths, head_dim, dtype, i) for i, (lengths, head_dim, dtype) in enumerate(
    (n, d, t) for n in LENGTHS for d in HEAD_DIMS for t in (torch.bfloat16, torch.float16))]


@pytest.mark.parametrize("lengths,head_dim,dtype,index", CASES,
                         ids=[f"{n[0]}x{n[1]}-d{d}-{str(t)[6:]}" for n, d, t, _ in CASES])
def test_matches_reference(lengths, head_dim, dtype, index):
    # GQA ratio and mask rotate over the grid so that every pair meets every length.
    group, mask = GROUPS[index % 3], MASKS[(index // 2) % len(MASKS)]
    num_kv_heads = 2
    q, k, v = make_qkv(*lengths, num_kv_heads * group, num_kv_heads, head_dim, dtype, "cuda")
    kwargs = mask_kwargs(mask)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("head_dim", range(8, 513, 8))
def test_every_head_dim_multiple_of_8(head_dim):
    """Every claimed head dim runs (on the narrowest tile that holds it, the rest zero-filled)."""
    q, k, v = make_qkv(70, 135, 4, 2, head_dim, torch.bfloat16, "cuda")
    out, lse = run_prefill(q, k, v, causal=True)
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


@pytest.mark.parametrize("widths", [(264, 264), (512, 512), (128, 512), (512, 64)], ids=lambda w: f"{w[0]}-{w[1]}")
def test_head_dims_past_wgmma_tiles(widths, cuda_backend, monkeypatch):
    """Past 256 the wgmma kernel has no tile: forced, it refuses by name; chosen automatically, the
    call runs on the mma.sync kernel's 512 tile, on Hopper too."""
    q, k, v = make_qkv(100, 300, 4, 2, widths[0], torch.bfloat16, "cuda", head_dim_v=widths[1])
    if cuda_backend == "sm90":
        with pytest.raises(ValueError, match=r"no CUDA kernel for head dims .* in the wgmma kernel"):
            torch_attn.prefill(q, k, v)
        monkeypatch.setenv("TORCH_ATTN_BACKEND", "auto")
        names = prefill_kernels_launched(lambda: torch_attn.prefill(q, k, v, causal=True))
        assert names and all("prefill_sm90_kernel" not in name for name in names), names
    out, lse = run_prefill(q, k, v, causal=True)
    check_against_reference(out, lse, q, k, v, causal=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
def test_ragged_batch_with_empty_sequences(causal, head_dim):
    qo_lens = [100, 0, 1, 517, 64, 0, 129, 3000]
    kv_lens = [100, 7, 0, 900, 64, 0, 129, 3000]  # prefixes (kv > q), empty keys, empty queries
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 16, 4, head_dim, torch.bfloat16, "cuda")
    kwargs = dict(causal=causal, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_ragged_batch_of_many_sequences(causal):
    """More than 32 sequences: the kernel's other work-lookup path (prefix sums over
    chunks of 32), with empty sequences among them."""
    gen = torch.Generator().manual_seed(3)
    qo_lens = torch.randint(0, 300, (45,), generator=gen).tolist()
    qo_lens[7] = qo_lens[40] = 0
    kv_lens = [n + int(torch.randint(0, 200, (1,), generator=gen)) for n in qo_lens]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 2, 128, torch.bfloat16, "cuda", generator=gen)
    kwargs = dict(causal=causal, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


def test_ragged_batch_with_one_long_sequence():
    """Round-robin tile order with one sequence of many tiles beside short ones."""
    q, k, v, qo_indptr, kv_indptr = ragged_batch([9000, 3, 130], [9000, 3, 200], 4, 4, 64, torch.float16, "cuda")
    kwargs = dict(causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


@pytest.mark.parametrize("mask", [dict(causal=True), dict(causal=True, window_left=0),
                                  dict(causal=False, window_left=5)])
def test_rows_that_see_no_key_are_zero(mask):
    # qo_len > kv_len with a bottom-right causal mask: the first rows see no key.
    q, k, v = make_qkv(300, 70, 4, 2, 128, torch.bfloat16, "cuda")
    kwargs = mask_kwargs(mask)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)
    assert torch.isneginf(lse).any() or not mask.get("causal")


@pytest.mark.parametrize("lengths", [(1000, 1000), (333, 1000), (191, 4000), (1000, 333)])
@pytest.mark.parametrize("mask", [dict(causal=True), dict(causal=True, window_left=0),
                                  dict(causal=True, window_left=70), dict(causal=False, window_left=130)])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
def test_query_tile_groups_that_see_different_key_tiles(head_dim, mask, lengths):
    """Under a causal mask or a window the wgmma kernel's consumer groups (64 query rows
    each) compute only the K/V tiles their own rows see and pass over the others
    (group_tile_range): the first group of a tile leaves the diagonal tile to the later
    ones, a narrow window leaves earlier tiles behind for later groups, and a group whose
    rows lie before the sequence (end-aligned tiles) or, with more queries than keys,
    see no key under the causal mask passes over all."""
    q, k, v = make_qkv(*lengths, 8, 2, head_dim, torch.bfloat16, "cuda")
    kwargs = mask_kwargs(mask)
    out, lse = run_prefill(q, k, v, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


def rising_logits_qkv(qo_len, kv_len, head_dim, dtype, rise_per_key, jump_at, jump):
    """q, k, v whose logits q.k / sqrt(D) move by rise_per_key from one key to the next
    (rising for most query rows, falling for some, flat for others) and by `jump` more
    from key jump_at on: each key tile's max can exceed the row's max so far."""
    gen = torch.Generator().manual_seed(11)
    num_qo_heads, num_kv_heads = 4, 2
    direction = torch.ones(head_dim) / math.sqrt(head_dim)  # logit = (q . u)(k . u) for k along u
    keys = torch.arange(kv_len, dtype=torch.float64)
    level = rise_per_key * keys + jump * (keys >= jump_at)  # k . u
    k = level[:, None, None] * direction + 0.3 * torch.randn(kv_len, num_kv_heads, head_dim, generator=gen)
    sign = torch.tensor([1.0, -1.0, 0.0, 0.5])[torch.arange(qo_len) % 4]  # rising, falling, flat, rising
    q = sign[:, None, None] * direction * math.sqrt(head_dim) + 0.3 * torch.randn(qo_len, num_qo_heads, head_dim,
                                                                                     generator=gen)
    v = torch.randn(kv_len, num_kv_heads, head_dim, generator=gen)
    return (x.to(device="cuda", dtype=dtype) for x in (q, k, v))


@pytest.mark.parametrize("jump", [0.0, 200.0])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
def test_logits_rising_across_key_tiles(head_dim, causal, jump):
    """A row's max moves on almost every key tile (logits rise by ~13 per 64 keys, far
    past the kernels' lazy-rescale margin of 2^8 on the weights), and with `jump` once
    by 200 (x log2 e: past exp2's range of 128 in log2 units): the max, the rescaled O
    and l, and the wgmma kernel's recomputation of a tile's scores where weights at
    the old max would grow too large, all against the reference. (PyTorch in bf16
    rounds logits of a few hundred by whole units: no yardstick here. The tolerance
    is the weights' bf16 rounding and out's: both kernels measured 0.0043-0.0060 on H100.)"""
    q, k, v = rising_logits_qkv(700, 1000, head_dim, torch.bfloat16, rise_per_key=0.2, jump_at=517, jump=jump)
    out, lse = run_prefill(q, k, v, causal=causal)
    check_against_reference(out, lse, q, k, v, out_atol=0.02, causal=causal, sm_scale=None, window_left=-1,
                            logits_soft_cap=0.0)


@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [80, 128, 400])
def test_poisoned_tails_dense(poison, causal, head_dim):
    """K and V are views into buffers whose rows past kv_len, and whose head-dim
    columns past D, hold poison; q's padding columns too. Nothing of it may reach out."""
    batch, qo_len, kv_len, width = 3, 77, 131, 128 if head_dim < 128 else head_dim + 8
    def poisoned(tokens, heads, extra_rows):
        return poisoned_view(batch, tokens, heads, head_dim, torch.bfloat16, poison, extra_rows, width)
    q, k, v = poisoned(qo_len, 8, 0), poisoned(kv_len, 2, 61), poisoned(kv_len, 2, 61)
    assert k.stride(0) == (kv_len + 61) * 2 * width  # poisoned rows sit right after each sequence
    out, lse = run_prefill(q, k, v, causal=causal)
    check_against_reference(out, lse, q, k, v, causal=causal, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_poisoned_tail_ragged(poison):
    """The last sequence's last K/V tile runs past the tensor into poisoned memory."""
    qo_lens, kv_lens = [33, 200, 77], [90, 200, 131]
    q, k, v, qo_indptr, kv_indptr = ragged_batch(qo_lens, kv_lens, 8, 8, 128, torch.float16, "cuda")
    total = k.shape[0]
    def with_poison_after(t):
        buf = torch.full((total + 64, *t.shape[1:]), poison, dtype=t.dtype, device="cuda")
        buf[:total] = t
        return buf[:total]
    kp, vp = with_poison_after(k), with_poison_after(v)
    kwargs = dict(causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    out, lse = run_prefill(q, kp, vp, **kwargs)
    check_against_reference(out, lse, q, k, v, **kwargs)


def test_fused_qkv_views():
    """q, k, v sliced from one fused projection output: only the last dim is contiguous."""
    tokens, heads, head_dim = 300, 8, 128
    qkv = torch.randn(tokens, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    out, lse = run_prefill(q, k, v, causal=True)
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


def test_dense_batch_4d():
    q, k, v = make_qkv(200, 333, 8, 2, 64, torch.bfloat16, "cuda", batch=3)
    out, lse = run_prefill(q, k, v, causal=True, window_left=64)
    check_against_reference(out, lse, q, k, v, causal=True, sm_scale=None, window_left=64, logits_soft_cap=0.0)


def test_dense_batch_in_l2_sized_groups():
    """Long K/V: the 24 (sequence, head) pairs run in groups (the wgmma kernel on an H100: 16, then
    8; pairs_per_group, work_item.cuh); every tile of every pair is computed."""
    q, k, v = make_qkv(300, 20000, 8, 4, 128, torch.bfloat16, "cuda", batch=3)
    for causal in (False, True):
        out, lse = run_prefill(q, k, v, causal=causal)
        check_against_reference(out, lse, q, k, v, causal=causal, sm_scale=None, window_left=-1, logits_soft_cap=0.0)


def test_bitwise_deterministic():
    q, k, v, qo_indptr, kv_indptr = ragged_batch([1000, 17, 2048], [1500, 17, 2048], 32, 8, 128, torch.bfloat16, "cuda")
    kwargs = dict(causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr, return_lse=True)
    first_out, first_lse = torch_attn.prefill(q, k, v, **kwargs)
    for _ in range(3):
        out, lse = torch_attn.prefill(q, k, v, **kwargs)
        assert torch.equal(out, first_out) and torch.equal(lse, first_lse)


def test_runs_on_current_stream():
    q, k, v = make_qkv(4096, 4096, 16, 16, 128, torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = torch_attn.prefill(q, k, v, causal=True)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.cuda.current_stream().wait_stream(side)
    assert (out.float() - expected.float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("case", ["dense", "ragged", "dense, more items than SMs"])
def test_cuda_graph_capture_and_replay(case):
    """Captured once, replayed on new data written in place: no host sync, no host read of indptr.
    With more query tiles x heads than SMs the wgmma kernel's CTAs claim items from a counter
    that every replay must zero again."""
    ragged = case == "ragged"
    if ragged:
        q, k, v, qo_indptr, kv_indptr = ragged_batch([100, 300, 57], [100, 400, 57], 8, 2, 128, torch.bfloat16, "cuda")
        kwargs = dict(causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    elif case == "dense":
        q, k, v = make_qkv(333, 333, 8, 2, 128, torch.bfloat16, "cuda", batch=2)
        kwargs = dict(causal=True)
    else:  # 4 x 8 tiles x 16 heads = 512 items
        q, k, v = make_qkv(1000, 1000, 16, 4, 128, torch.bfloat16, "cuda", batch=4)
        kwargs = dict(causal=True)
    torch_attn.prefill(q, k, v, **kwargs)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = torch_attn.prefill(q, k, v, return_lse=True, **kwargs)
    for _ in range(2):
        q.copy_(torch.randn_like(q)), k.copy_(torch.randn_like(k)), v.copy_(torch.randn_like(v))
        if ragged:  # new lengths, same totals: the graph must follow the device indptr
            qo_indptr.copy_(torch.tensor([0, 250, 390, 457], dtype=torch.int32))
            kv_indptr.copy_(torch.tensor([0, 10, 500, 557], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference(out, lse, q, k, v, sm_scale=None, window_left=-1, logits_soft_cap=0.0, **kwargs)


def test_kv_cache_over_2_31_elements():
    """64-bit offsets: 2M tokens x 8 heads x 128 = 2^31 elements per K and V; the last
    sequence lives past element 2^31."""
    total_kv, heads, head_dim = 2 * 1024 * 1024 + 1024, 8, 128
    k = torch.empty(total_kv, heads, head_dim, dtype=torch.bfloat16, device="cuda").normal_()
    v = torch.empty_like(k).normal_()
    qo_lens, kv_lens = [64, 200], [total_kv - 200, 200]
    q = torch.randn(sum(qo_lens), 32, head_dim, dtype=torch.bfloat16, device="cuda")
    qo_indptr = torch.tensor([0, 64, 264], dtype=torch.int32, device="cuda")
    kv_indptr = torch.tensor([0, kv_lens[0], total_kv], dtype=torch.int32, device="cuda")
    out, lse = run_prefill(q, k, v, causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    tail_q, tail_k, tail_v = q[64:], k[kv_lens[0]:], v[kv_lens[0]:]
    assert tail_k.storage_offset() > 2**31  # this sequence's keys start past element 2^31
    check_against_reference(out[64:], lse[64:], tail_q, tail_k, tail_v, causal=True, sm_scale=None, window_left=-1,
                            logits_soft_cap=0.0)
    assert torch.isfinite(out[:64]).all()


def test_empty_inputs():
    q, k, v = make_qkv(0, 5, 4, 2, 64, torch.bfloat16, "cuda")
    out, lse = torch_attn.prefill(q, k, v, return_lse=True)
    assert out.shape == (0, 4, 64) and lse.shape == (0, 4)
    q, k, v = make_qkv(5, 0, 4, 2, 64, torch.bfloat16, "cuda")
    out, lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


def kernel_names_of_one_call(**kwargs):
    q, k, v = make_qkv(300, 300, 4, 2, 128, torch.bfloat16, "cuda")
    return prefill_kernels_launched(lambda: torch_attn.prefill(q, k, v, **kwargs))


def test_forced_backend_runs_its_kernel(cuda_backend):
    names = kernel_names_of_one_call(causal=True)
    expected = "prefill_sm90_kernel" if cuda_backend == "sm90" else "prefill_kernel<"
    assert names and all(expected in name for name in names), names


def test_auto_backend_picks_wgmma_on_hopper(monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BACKEND", "auto")
    archs = torch_attn.LIBRARY.config.arch_list if torch_attn.LIBRARY.config else ()
    hopper = torch.cuda.get_device_capability() == (9, 0) and "9.0a" in archs
    names = kernel_names_of_one_call()
    assert names and all(("prefill_sm90_kernel" in name) == hopper for name in names), names


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BACKEND", "sm70")
    q, k, v = make_qkv(10, 10, 2, 2, 64, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="TORCH_ATTN_BACKEND: expected auto, sm80 or sm90"):
        torch_attn.prefill(q, k, v)
