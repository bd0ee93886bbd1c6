"""A decoder layer calling torch_attn under torch.compile: one graph, no recompiles over
sequence lengths, same numbers as eager; and CUDA graphs through mode="reduce-overhead"."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_attn
from conftest import HAS_GPU

LENGTHS = [33, 64, 127, 250, 511]


class DecoderLayer(nn.Module):
    """Pre-norm attention (fused qkv projection, GQA 8/2, head_dim 64) and an MLP."""

    def __init__(self, hidden=512, heads=8, kv_heads=2, head_dim=64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.norm1, self.norm2 = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, hidden, bias=False)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))

    def forward(self, x):  # x [B, S, hidden]
        qkv = self.qkv(self.norm1(x)).unflatten(-1, (self.heads + 2 * self.kv_heads, self.head_dim))
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)  # strided views of one tensor
        attn = torch_attn.prefill(q, k, v, causal=True, window_left=100)
        x = x + self.out(attn.flatten(-2))
        return x + self.mlp(self.norm2(x))


def make_layer(device, dtype):
    torch.manual_seed(0)
    return DecoderLayer().to(device=device, dtype=dtype).eval()


DEVICES = [pytest.param("cpu", torch.float32, 1e-4, id="cpu"),
           pytest.param("cuda", torch.bfloat16, 3e-2, id="cuda",
                        marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]


@pytest.mark.parametrize("device,dtype,tol", DEVICES)
def test_decoder_layer_fullgraph_dynamic_no_recompile(device, dtype, tol):
    layer = make_layer(device, dtype)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    def check(n):
        x = torch.randn(2, n, 512, device=device, dtype=dtype)
        torch.testing.assert_close(compiled(x), layer(x), atol=tol, rtol=tol)

    with torch.no_grad():
        check(LENGTHS[0])  # compiles one dynamic graph ...
        with torch.compiler.set_stance("fail_on_recompile"):  # ... that every other length reuses
            for n in LENGTHS[1:]:
                check(n)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
def test_decoder_layer_reduce_overhead_matches_eager():
    """mode="reduce-overhead" records CUDA graphs: the op must run on the capture stream."""
    layer = make_layer("cuda", torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for n in (128, 128, 128, 300, 300):  # repeated shapes replay the recorded graphs
            x = torch.randn(2, n, 512, device="cuda", dtype=torch.bfloat16)
            got = compiled(x).clone()
            torch.testing.assert_close(got, layer(x), atol=3e-2, rtol=3e-2)


def test_ragged_call_compiles_without_graph_break():
    def f(q, k, v, qo_indptr, kv_indptr):
        return torch_attn.prefill(q, k, v, causal=True, qo_indptr=qo_indptr, kv_indptr=kv_indptr) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    q, k, v = torch.randn(40, 4, 64), torch.randn(60, 2, 64), torch.randn(60, 2, 64)
    qo, kv = torch.tensor([0, 10, 40], dtype=torch.int32), torch.tensor([0, 25, 60], dtype=torch.int32)
    torch.testing.assert_close(compiled(q, k, v, qo, kv), f(q, k, v, qo, kv))
