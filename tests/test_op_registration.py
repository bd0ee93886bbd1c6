"""The op as the dispatcher, torch.compile and fake tensors see it (CPU, runs in CI)."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_attn
from conftest import make_qkv, ragged_batch

EXPECTED_SCHEMA = (
    "attn::prefill(Tensor q, Tensor k, Tensor v, Tensor? qo_indptr=None, Tensor? kv_indptr=None, *, "
    "bool causal=False, float? sm_scale=None, int window_left=-1, int chunk_size=0, float logits_soft_cap=0., "
    "Tensor? sinks=None, Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, "
    "ScalarType? out_dtype=None) -> (Tensor out, Tensor lse)")


def test_schema():
    assert str(torch.ops.attn.prefill.default._schema) == EXPECTED_SCHEMA


def test_backends_registered():
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("attn::prefill", key)


@pytest.mark.parametrize("layout", ["single", "batched", "ragged"])
def test_opcheck(layout):
    if layout == "ragged":
        q, k, v, qo_indptr, kv_indptr = ragged_batch([5, 0, 9], [7, 3, 9], 4, 2, 64, torch.bfloat16, "cpu")
        args = (q, k, v, qo_indptr, kv_indptr)
    else:
        q, k, v = make_qkv(9, 12, 4, 2, 64, torch.float32, "cpu", batch=2 if layout == "batched" else None)
        args = (q, k, v)
    torch.library.opcheck(torch.ops.attn.prefill.default, args,
                          dict(causal=True, sm_scale=0.2, window_left=4, logits_soft_cap=5.0))
    torch.library.opcheck(torch.ops.attn.prefill.default, args, dict(causal=True, sinks=torch.randn(4)))
    torch.library.opcheck(torch.ops.attn.prefill.default, args, dict(causal=True, chunk_size=4))


def test_opcheck_head_dims_differ():
    """MLA: v (and out) narrower than q and k, dense and paged."""
    q, k, v = make_qkv(9, 12, 4, 2, 96, torch.float32, "cpu", head_dim_v=32)
    torch.library.opcheck(torch.ops.attn.prefill.default, (q, k, v), dict(causal=True))
    cache = torch.randn(3, 4, 2, 96)
    args = (q, cache, cache[..., :40], torch.tensor([0, 4, 9], dtype=torch.int32),
            torch.tensor([[0, 1], [2, 0]], dtype=torch.int32), torch.tensor([7, 5], dtype=torch.int32))
    torch.library.opcheck(torch.ops.attn.prefill_paged.default, args, dict(causal=True, chunk_size=3))
    assert torch.ops.attn.prefill_paged(*args)[0].shape == (9, 4, 40)


def test_fake_tensors_on_cuda_device():
    """Shapes and dtypes of the outputs for CUDA inputs, traced without a GPU."""
    with FakeTensorMode():
        q = torch.empty(3, 100, 32, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.empty(3, 150, 8, 128, dtype=torch.bfloat16, device="cuda")
        out, lse = torch.ops.attn.prefill(q, k, k, causal=True)
        assert out.shape == q.shape and out.dtype == q.dtype and out.device.type == "cuda"
        assert lse.shape == (3, 100, 32) and lse.dtype == torch.float32
        out, _ = torch.ops.attn.prefill(q, k, k[..., :64], causal=True)
        assert out.shape == (3, 100, 32, 64)
        with pytest.raises(TypeError, match="float16, bfloat16 or fp8"):
            torch.ops.attn.prefill(q.float(), k.float(), k.float())


def test_compile_fullgraph_dynamic_no_recompile():
    def layer(x, wq, wk, wv):
        # a tiny attention block: projections around the op
        q = (x @ wq).unflatten(-1, (4, 32))
        k = (x @ wk).unflatten(-1, (2, 32))
        v = (x @ wv).unflatten(-1, (2, 32))
        return torch_attn.prefill(q, k, v, causal=True).flatten(-2)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    wq, wk, wv = torch.randn(64, 128), torch.randn(64, 64), torch.randn(64, 64)
    lengths = [37, 64, 101, 250, 513]
    with torch.no_grad():
        x = torch.randn(lengths[0], 64)
        torch.testing.assert_close(compiled(x, wq, wk, wv), layer(x, wq, wk, wv), atol=1e-4, rtol=1e-4)
        with torch.compiler.set_stance("fail_on_recompile"):
            for n in lengths[1:]:
                x = torch.randn(n, 64)
                torch.testing.assert_close(compiled(x, wq, wk, wv), layer(x, wq, wk, wv), atol=1e-4, rtol=1e-4)


def test_inference_only_guard():
    """The op itself refuses inputs that require grad (its Autograd kernel), naming them."""
    q, k, v = make_qkv(4, 4, 2, 2, 64, torch.float32, "cpu")
    q.requires_grad_(True)
    for run in (lambda: torch_attn.prefill(q, k, v), lambda: torch.ops.attn.prefill(q, k, v)):
        with pytest.raises(RuntimeError, match="q requires grad, but torch_attn is inference-only"):
            run()
    with torch.no_grad():
        assert torch_attn.prefill(q, k, v).shape == q.shape
    assert torch._C._dispatch_has_kernel_for_dispatch_key("attn::prefill", "Autograd")


def test_wrapper_returns_lse_on_request():
    q, k, v = make_qkv(4, 6, 2, 1, 64, torch.float32, "cpu")
    out = torch_attn.prefill(q, k, v)
    out2, lse = torch_attn.prefill(q, k, v, return_lse=True)
    assert torch.equal(out, out2) and lse.shape == (4, 2)
