"""The out= overloads (attn::prefill.out, attn::prefill_paged.out): the results of the functional ops,
bit for bit, written into the caller's buffers: views with row strides into NaN-poisoned storage, only
the view written; lse optional. The schemas, opcheck, torch.compile (a mutating op, functionalized)
on the CPU path (CI); on the GPU (marked) both kernels, CUDA-graph capture and replay, and no
allocation on the op path once warm. Malformed buffers: tests/malformed_calls.py."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import HAS_GPU, indptr_of, make_qkv, ragged_batch
from test_paged import paged_cache

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
MASKS = [dict(causal=True), dict(causal=False, window_left=20), dict(causal=True, chunk_size=48),
         dict(causal=True, logits_soft_cap=10.0, sinks=True)]


def buffer_view(shape, dtype, device, spare_heads=2, spare_dim=8):
    """A [..., H, D] view into a NaN-filled buffer with spare heads and columns around it (an engine's slice),
    and the buffer."""
    *lead, heads, dim = shape
    buf = torch.full((*lead, heads + spare_heads, dim + spare_dim), math.nan, dtype=dtype, device=device)
    return buf[..., 1:1 + heads, :dim], buf


def lse_view(shape, device):
    """[..., H] float32 as a strided view (every other column) into a NaN-filled buffer."""
    buf = torch.full((*shape[:-1], 2 * shape[-1]), math.nan, device=device)
    return buf[..., ::2], buf


def mask_of(mask, heads, device):
    kwargs = dict(mask)
    if kwargs.pop("sinks", False):
        kwargs["sinks"] = torch.linspace(-2, 2, heads, device=device)
    return kwargs


def check_into_views(call, out_shape, dtype, device):
    """call(**kw) (the wrapper) with out= and lse= views against call() without: equal bits, nothing
    written outside the views; and out= alone."""
    want_out, want_lse = call(return_lse=True)
    out, out_buf = buffer_view(out_shape, dtype, device)
    lse, lse_buf = lse_view(out_shape[:-1], device)
    got_out, got_lse = call(out=out, lse=lse, return_lse=True)
    assert got_out is out and got_lse is lse
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    assert int(torch.isnan(out_buf).sum()) == out_buf.numel() - out.numel(), "out= wrote outside out"
    assert int(torch.isnan(lse_buf).sum()) == lse_buf.numel() - lse.numel(), "out= wrote outside lse"
    alone, _ = buffer_view(out_shape, dtype, device)
    assert call(out=alone) is alone and torch.equal(alone, want_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["single", "batched", "ragged"])
@pytest.mark.parametrize("mask", MASKS, ids=["causal", "window", "chunks", "softcap-sinks"])
def test_prefill_out_matches_the_functional_op(device, layout, mask):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    extra = {}
    if layout == "ragged":
        q, k, v, qo_indptr, kv_indptr = ragged_batch([65, 0, 130, 1], [65, 7, 300, 129], 8, 2, 128, dtype, device,
                                                     head_dim_v=64)
        extra = dict(qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    else:
        q, k, v = make_qkv(130, 257, 8, 2, 128, dtype, device, batch=3 if layout == "batched" else None, head_dim_v=64)
    kwargs = dict(mask_of(mask, 8, device), **extra)

    check_into_views(lambda **out: torch_attn.prefill(q, k, v, **kwargs, **out), (*q.shape[:-1], 64), dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_prefill_paged_out_matches_the_functional_op(device, layout):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    qo_lens, kv_lens = [7, 0, 65, 130], [7, 33, 300, 520]
    k_cache, v_cache, block_table, kv_lens_t, _, _ = paged_cache(kv_lens, 16, layout, 2, 128, dtype, device, math.nan,
                                                                 0, torch.Generator().manual_seed(3))
    q = torch.randn(sum(qo_lens), 8, 128).to(device, dtype)
    qo_indptr = indptr_of(qo_lens, device)
    kwargs = dict(kv_layout=layout, causal=True, sinks=torch.randn(8, device=device))

    def call(**out):
        return torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens_t, **kwargs, **out)
    check_into_views(call, q.shape, dtype, device)


def test_wrapper_rules():
    q, k, v = make_qkv(4, 6, 2, 1, 64, torch.float32, "cpu")
    with pytest.raises(ValueError, match="lse= is a buffer of the out= form"):
        torch_attn.prefill(q, k, v, lse=torch.empty(4, 2))
    with pytest.raises(ValueError, match="return_lse=True with out= needs lse="):
        torch_attn.prefill(q, k, v, out=torch.empty_like(q), return_lse=True)
    out = torch.empty_like(q)
    assert torch_attn.prefill(q, k, v, out=out) is out


def test_schemas():
    for op in (torch.ops.attn.prefill.out, torch.ops.attn.prefill_paged.out):
        schema = str(op._schema)
        assert schema.endswith("Tensor? sinks=None, Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, "
                               "ScalarType? out_dtype=None, Tensor(a!) out, Tensor(b!)? lse=None) -> ()"), schema
        for key in ("CPU", "CUDA", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op._name, key)


def test_opcheck():
    q, k, v = make_qkv(9, 12, 4, 2, 64, torch.float32, "cpu", head_dim_v=32)
    out, lse = torch.empty(9, 4, 32), torch.empty(9, 4)
    for kwargs in (dict(causal=True, out=out, lse=lse), dict(causal=True, chunk_size=4, sinks=torch.randn(4), out=out)):
        torch.library.opcheck(torch.ops.attn.prefill.out, (q, k, v), kwargs)
    cache = torch.randn(3, 4, 2, 64)
    args = (q, cache, cache[..., :32], torch.tensor([0, 4, 9], dtype=torch.int32),
            torch.tensor([[0, 1], [2, 0]], dtype=torch.int32), torch.tensor([7, 5], dtype=torch.int32))
    torch.library.opcheck(torch.ops.attn.prefill_paged.out, args, dict(causal=True, out=out, lse=lse))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_functionalizes_the_out_form(device):
    """A layer that writes attention into a slice of a preallocated buffer, compiled whole (on CUDA
    by inductor; without a GPU aot_eager, which functionalizes the same way)."""
    def layer(x, wq, wk, wv, buf):
        q = (x @ wq).unflatten(-1, (4, 32))
        k = (x @ wk).unflatten(-1, (2, 32))
        v = (x @ wv).unflatten(-1, (2, 32))
        torch_attn.prefill(q, k, v, causal=True, out=buf[: x.shape[0]])
        return buf[: x.shape[0]].flatten(-2) * 2

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True,
                             backend="inductor" if device == "cuda" else "aot_eager")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    wq, wk, wv = (torch.randn(64, n, device=device, dtype=dtype) / 8 for n in (128, 64, 64))
    with torch.no_grad():
        for n in (37, 101):
            x = torch.randn(n, 64, device=device, dtype=dtype)
            want_buf, got_buf = (torch.zeros(128, 4, 32, device=device, dtype=dtype) for _ in range(2))
            want = layer(x, wq, wk, wv, want_buf)
            got = compiled(x, wq, wk, wv, got_buf)
            tol = 2e-2 if device == "cuda" else 1e-4  # (inductor's bf16 projections round differently)
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
            torch.testing.assert_close(got_buf, want_buf, atol=tol, rtol=tol)  # the mutation reached the input


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
def test_cuda_graph_and_no_allocation(cuda_backend):
    """Warm, the out= form allocates nothing (the claim counter and tail-split partials come from the
    stream's scratch buffer); it captures into a CUDA graph whose replays follow new inputs."""
    shapes = [(1, 128, 32, 8), (4, 1024, 16, 16), (1, 4096, 16, 8)]  # incl. a tail split (uneven last round)
    for batch, seq, hq, hkv in shapes:
        q, k, v = make_qkv(seq, seq, hq, hkv, 128, torch.bfloat16, "cuda", batch=batch)
        out, lse = torch.empty_like(q), torch.empty(q.shape[:-1], device="cuda")
        for causal in (False, True):
            for lse_given in (lse, None):  # warm-up: the scratch buffer grows to what each form needs
                torch_attn.prefill(q, k, v, causal=causal, out=out, lse=lse_given)
            torch.cuda.synchronize()
            before = torch.cuda.memory_stats()["allocation.all.allocated"]
            torch_attn.prefill(q, k, v, causal=causal, out=out, lse=lse)
            torch_attn.prefill(q, k, v, causal=causal, out=out)
            assert torch.cuda.memory_stats()["allocation.all.allocated"] == before, (batch, seq, causal)
            want_out, want_lse = torch_attn.prefill(q, k, v, causal=causal, return_lse=True)
            assert torch.equal(out, want_out) and torch.equal(lse, want_lse)

    q, k, v = make_qkv(1000, 1500, 16, 4, 128, torch.bfloat16, "cuda", batch=2)
    out_buf = torch.full((2, 1000, 20, 136), math.nan, dtype=torch.bfloat16, device="cuda")
    out, lse = out_buf[:, :, 2:18, :128], torch.empty(2, 1000, 16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch_attn.prefill(q, k, v, causal=True, out=out, lse=lse)
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t, dtype=torch.float32))
        out.fill_(math.nan)
        graph.replay()
        want_out, want_lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
        torch.cuda.synchronize()
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
