"""Batch invariance (serving engines' batch-invariant mode, TORCH_ATTN_BATCH_INVARIANT=1): a sequence's
out and lse are bitwise the same whatever other sequences share its call (ragged, dense and paged
batches of 1-64 others, the sequence anywhere among them), on the CPU path (CI) and both CUDA kernels
(marked). The mode turns off the wgmma kernel's tail split, the one choice that depends on the batch."""
from __future__ import annotations

import random

import pytest
import torch

import torch_attn
from conftest import HAS_GPU, indptr_of

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
HQ, HKV, D = 8, 2, 128


def dtype_on(device):
    return torch.bfloat16 if device == "cuda" else torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
def test_ragged_batches(device, causal, monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BATCH_INVARIANT", "1")
    rng = random.Random(int(causal))
    dtype = dtype_on(device)
    target = [t.to(device, dtype)
              for t in (torch.randn(700, HQ, D), torch.randn(1500, HKV, D), torch.randn(1500, HKV, D))]

    def run(seqs):
        q, k, v = (torch.cat([s[i] for s in seqs]) for i in range(3))
        qo = indptr_of([len(s[0]) for s in seqs], device)
        kv = indptr_of([len(s[1]) for s in seqs], device)
        return torch_attn.prefill(q, k, v, causal=causal, qo_indptr=qo, kv_indptr=kv, return_lse=True), qo

    (alone_out, alone_lse), _ = run([target])
    for others in (1, 3, 17, 64):
        seqs = []
        for _ in range(others):
            kv_len = rng.randint(1, 1500)
            q_len = rng.randint(1, kv_len) if device == "cuda" else rng.randint(1, min(kv_len, 64))
            seqs.append([t.to(device, dtype) for t in (torch.randn(q_len, HQ, D), torch.randn(kv_len, HKV, D),
                                                       torch.randn(kv_len, HKV, D))])
        at = rng.randint(0, others)
        seqs.insert(at, target)
        (out, lse), qo = run(seqs)
        rows = slice(int(qo[at]), int(qo[at + 1]))
        assert torch.equal(out[rows], alone_out) and torch.equal(lse[rows], alone_lse), (others, at)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_batches(device, monkeypatch):
    """256 queries x 8192 keys, 32/8 heads, no mask: alone, the wgmma kernel would split its items into
    pieces (fewer items than half the SMs), in a batch of 4 or more it would not."""
    monkeypatch.setenv("TORCH_ATTN_BATCH_INVARIANT", "1")
    dtype = dtype_on(device)
    queries, keys = (256, 8192) if device == "cuda" else (64, 512)
    gen = torch.Generator().manual_seed(5)
    target = [torch.randn(1, n, h, D, generator=gen).to(device, dtype)
              for n, h in ((queries, 32), (keys, 8), (keys, 8))]
    alone_out, alone_lse = torch_attn.prefill(*target, return_lse=True)
    for batch in (2, 4, 9):
        others = [torch.randn(batch - 1, *t.shape[1:], generator=gen).to(device, dtype) for t in target]
        at = batch // 2
        q, k, v = (torch.cat([o[:at], t, o[at:]]) for o, t in zip(others, target))
        out, lse = torch_attn.prefill(q, k, v, return_lse=True)
        assert torch.equal(out[at], alone_out[0]) and torch.equal(lse[at], alone_lse[0]), batch


def paged(seqs, page_size, device, rng):
    """The sequences' K/V written into shuffled pages of NaN-filled caches (NHD): (k_cache, v_cache,
    block_table, kv_lens)."""
    pages_of = [-(-len(k) // page_size) for _, k, _ in seqs]
    order = list(range(sum(pages_of)))
    rng.shuffle(order)
    shape = (len(order) + 1, page_size, HKV, D)
    k_cache = torch.full(shape, float("nan"), dtype=seqs[0][1].dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    table = torch.zeros(len(seqs), max(pages_of), dtype=torch.int32)
    used = 0
    for b, (_, k, v) in enumerate(seqs):
        for j in range(pages_of[b]):
            page, rows = order[used], slice(j * page_size, (j + 1) * page_size)
            used += 1
            table[b, j] = page
            k_cache[page, :len(k[rows])] = k[rows]
            v_cache[page, :len(v[rows])] = v[rows]
    lens = torch.tensor([len(k) for _, k, _ in seqs], dtype=torch.int32, device=device)
    return k_cache, v_cache, table.to(device), lens


@pytest.mark.parametrize("device", DEVICES)
def test_paged_batches(device, monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BATCH_INVARIANT", "1")
    rng = random.Random(3)
    dtype = dtype_on(device)
    target = [t.to(device, dtype)
              for t in (torch.randn(300, HQ, D), torch.randn(900, HKV, D), torch.randn(900, HKV, D))]

    def run(seqs):
        q = torch.cat([s[0] for s in seqs])
        qo = indptr_of([len(s[0]) for s in seqs], device)
        k_cache, v_cache, table, lens = paged(seqs, 16, device, rng)
        out, lse = torch_attn.prefill_paged(q, k_cache, v_cache, qo, table, lens, causal=True, return_lse=True)
        return out, lse, qo

    alone_out, alone_lse, _ = run([target])
    for others in (1, 5, 40):
        seqs = []
        for _ in range(others):
            kv_len = rng.randint(1, 1200)
            seqs.append([t.to(device, dtype) for t in (torch.randn(rng.randint(1, min(kv_len, 200)), HQ, D),
                                                       torch.randn(kv_len, HKV, D), torch.randn(kv_len, HKV, D))])
        at = rng.randint(0, others)
        seqs.insert(at, target)
        out, lse, qo = run(seqs)
        rows = slice(int(qo[at]), int(qo[at + 1]))
        assert torch.equal(out[rows], alone_out) and torch.equal(lse[rows], alone_lse), (others, at)
