"""fp8 inputs: an fp8 KV cache (float8_e4m3fn or float8_e5m2 k and v) under bf16 or fp16 q, and fp8 q,
k and v, with per-tensor or per-head descale factors, against the float64 reference on the dequantized
inputs (code * scale). Ragged, dense and paged; every head-dim tile; masks, sinks, out=; NaN codes in
the tails and unused pages (the zero-fill rule: a NaN code times a zero weight is still NaN), outputs
poisoned before the call. CPU cases run in CI; the same cases run on the GPU (marked), where fp8 runs
on the mma.sync kernel (dequantized on load) under either backend setting; forcing the wgmma kernel
(TORCH_ATTN_BACKEND=sm90) is refused with a clear error until it has an fp8 variant."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn
from conftest import EPS, HAS_GPU, LSE_TOL, indptr_of, poison_cuda_allocator
from torch_attn.reference import prefill_reference
from test_paged import paged_cache

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]


def wgmma_refuses(device: str, cuda_backend: str) -> bool:
    """Forced sm90 with fp8 inputs: the op must refuse (the test then checks that and stops)."""
    return device == "cuda" and cuda_backend == "sm90"


def quantize(x: torch.Tensor, dtype, per_head: bool | None):
    """x [.., heads, D] as fp8 codes and the descale factor that maps them back: per head
    (amax of the head / the format's max), per tensor, or None (codes = x, scale 1)."""
    if per_head is None:
        return x.to(dtype), None
    dims = tuple(d for d in range(x.dim()) if d != x.dim() - 2) if per_head else tuple(range(x.dim()))
    amax = x.abs().amax(dim=dims).float().clamp(min=1e-6)
    scale = amax / torch.finfo(dtype).max
    view = scale.view(-1, 1) if per_head else scale
    return (x.float() / view).to(dtype), scale.to(torch.float32)


def dequantized(codes: torch.Tensor, scale) -> torch.Tensor:
    """The real values in float64: code * scale (per head along dim -2)."""
    values = codes.double()
    return values if scale is None else values * scale.double().view(-1, 1).expand(codes.shape[-2], 1)


def check_fp8(out, lse, q, k, v, scales, out_dtype, **kwargs):
    """out/lse against the float64 reference on the dequantized inputs, within FlashAttention's
    rule at the output dtype: 2x the error of the same computation in PyTorch at that dtype."""
    qd, kd, vd = (dequantized(t, scales.get(name)) for name, t in (("q", q), ("k", k), ("v", v)))
    assert out.dtype == out_dtype and out.shape == (*q.shape[:-1], v.shape[-1])
    ref_out, ref_lse = prefill_reference(qd, kd, vd, **kwargs)
    base, _ = prefill_reference(qd.to(out_dtype), kd.to(out_dtype), vd.to(out_dtype), compute_dtype=out_dtype,
                                **kwargs)
    assert torch.isfinite(out).all(), "non-finite output"
    err = (out.double().cpu() - ref_out.cpu()).abs().max().item() if out.numel() else 0.0
    allowed = EPS[out_dtype] + 2 * ((base.double() - ref_out).abs().max().item() if out.numel() else 0.0)
    assert err <= allowed, f"max |out - ref| = {err:.3e} > allowed {allowed:.3e}"
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isneginf(lse.cpu()), torch.isneginf(ref_lse.cpu()))
    if finite.any():
        assert (lse.double()[finite] - ref_lse[finite]).abs().max().item() <= LSE_TOL


def fp8_inputs(qo_len, kv_len, hq, hkv, d, dv, q_dtype, kv_dtype, per_head, device, generator, batch=None):
    lead = () if batch is None else (batch,)
    q = torch.randn(*lead, qo_len, hq, d, generator=generator)
    k = torch.randn(*lead, kv_len, hkv, d, generator=generator)
    v = torch.randn(*lead, kv_len, hkv, dv, generator=generator)
    scales = {}
    if q_dtype in (E4M3, E5M2):
        q, scales["q"] = quantize(q, q_dtype, per_head)
    else:
        q = q.to(q_dtype)
    k, scales["k"] = quantize(k, kv_dtype, per_head)
    v, scales["v"] = quantize(v, kv_dtype, per_head)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(q), move(k), move(v), {name: move(s) for name, s in scales.items()}


def scale_kwargs(scales):
    return {f"{name}_scale": s for name, s in scales.items()}


# (qo_len, kv_len, hq, hkv, head_dim, head_dim_v): the odd lengths, GQA 1/4/8, every tile width (MLA's 192/128).
SHAPES = [(1, 1, 4, 4, 64, 64), (7, 63, 8, 2, 128, 128), (65, 129, 8, 1, 96, 96), (127, 1000, 32, 8, 128, 128),
          (129, 65, 4, 1, 192, 128), (63, 4097, 4, 4, 256, 256), (1000, 1000, 8, 8, 80, 80), (4097, 127, 2, 2, 64, 64),
          (200, 333, 8, 2, 512, 512), (77, 129, 4, 4, 448, 320)]
DTYPES = [(torch.bfloat16, E4M3), (torch.float16, E5M2), (torch.bfloat16, E5M2), (E4M3, E4M3), (E5M2, E5M2),
          (torch.float16, E4M3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda t: f"q_{str(t[0])[6:]}-kv_{str(t[1])[6:]}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ragged_matches_reference(device, dtypes, shape, cuda_backend):
    qo_len, kv_len, hq, hkv, d, dv = shape
    q_dtype, kv_dtype = dtypes
    gen = torch.Generator().manual_seed(qo_len * 7 + kv_len)
    per_head = [None, False, True][(qo_len + d) % 3]
    q, k, v, scales = fp8_inputs(qo_len, kv_len, hq, hkv, d, dv, q_dtype, kv_dtype, per_head, device, gen)
    out_dtype = torch.float16 if q_dtype in (E4M3, E5M2) and d == 128 else None
    causal = (qo_len + kv_len) % 2 == 1
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(q, k, v, causal=causal, **scale_kwargs(scales))
        return
    expected_dtype = out_dtype or (torch.bfloat16 if q_dtype in (E4M3, E5M2) else q_dtype)
    if device == "cuda":
        poison_cuda_allocator(((qo_len, hq, dv), expected_dtype), ((qo_len, hq), torch.float32))
    out, lse = torch_attn.prefill(q, k, v, causal=causal, out_dtype=out_dtype, return_lse=True, **scale_kwargs(scales))
    check_fp8(out, lse, q, k, v, scales, expected_dtype, causal=causal)


MASKS = [dict(causal=True, window_left=40), dict(causal=True, logits_soft_cap=20.0, sm_scale=0.3),
         dict(causal=True, chunk_size=48), dict(causal=False, sinks=True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_masks_and_sinks_in_a_ragged_batch(device, mask, cuda_backend):
    gen = torch.Generator().manual_seed(5)
    qo_lens, kv_lens = [1, 130, 7, 64], [300, 130, 1000, 65]
    q, k, v, scales = fp8_inputs(sum(qo_lens), sum(kv_lens), 16, 4, 128, 128, torch.bfloat16, E4M3, True, device,
                                 gen)
    mask = dict(mask)
    if mask.pop("sinks", False):
        mask["sinks"] = torch.randn(16, generator=gen).to(device) * 3
    kwargs = dict(qo_indptr=indptr_of(qo_lens, device), kv_indptr=indptr_of(kv_lens, device), **mask)
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(q, k, v, **kwargs, **scale_kwargs(scales))
        return
    out, lse = torch_attn.prefill(q, k, v, return_lse=True, **kwargs, **scale_kwargs(scales))
    check_fp8(out, lse, q, k, v, scales, torch.bfloat16, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_dtype", [E4M3, E5M2], ids=["e4m3", "e5m2"])
def test_dense_batch_with_nan_codes_past_every_sequence(device, kv_dtype, cuda_backend):
    """k/v as views into buffers whose rows past each sequence and columns past the head dim hold NaN
    codes (e5m2: inf in V's columns too): none may reach the output."""
    gen = torch.Generator().manual_seed(11)
    batch, qo_len, kv_len, hkv, d = 3, 65, 127, 2, 96
    q, k, v, scales = fp8_inputs(qo_len, kv_len, 8, hkv, d, d, torch.float16, kv_dtype, False, device, gen,
                                 batch=batch)
    def poisoned(t, poison):
        buf = torch.full((batch, kv_len + 9, hkv, 128), poison, dtype=torch.float32).to(kv_dtype).to(device)
        buf[:, :kv_len, :, :d] = t
        return buf[:, :kv_len, :, :d]
    k, v = poisoned(k, math.nan), poisoned(v, math.inf if kv_dtype == E5M2 else math.nan)
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(q, k, v, **scale_kwargs(scales))
        return
    out, lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True, **scale_kwargs(scales))
    for b in range(batch):
        check_fp8(out[b], lse[b], q[b], k[b], v[b], scales, torch.float16, causal=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size,kv_dtype", [(16, E4M3), (5, E5M2), (64, E4M3)], ids=["p16-e4m3", "p5-e5m2",
                                                                                     "p64-e4m3"])
def test_paged_cache_with_nan_codes_in_unused_slots(device, layout, page_size, kv_dtype, cuda_backend):
    """The serving case: bf16 q over an fp8 paged cache (per-KV-head scales), prefills, a chunked
    prefill over a cached prefix and decode rows in one call; every slot no sequence owns holds a NaN code."""
    gen = torch.Generator().manual_seed(page_size)
    qo_lens, kv_lens, hq, hkv, d = [37, 1, 1, 200, 1], [37, 300, 17, 1030, 64], 16, 4, 128
    k_cache, v_cache, block_table, kv_lens_t, keys, values = paged_cache(kv_lens, page_size, layout, hkv, d, kv_dtype,
                                                                         device, generator=gen)
    k_scale = (torch.rand(hkv, generator=gen) + 0.5).to(device)
    v_scale = (torch.rand(hkv, generator=gen) + 0.5).to(device)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(torch.bfloat16).to(device)
    qo_indptr = indptr_of(qo_lens, device)
    kwargs = dict(kv_layout=layout, causal=True, k_scale=k_scale, v_scale=v_scale)
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens_t, **kwargs)
        return
    if device == "cuda":
        poison_cuda_allocator(((sum(qo_lens), hq, d), torch.bfloat16), ((sum(qo_lens), hq), torch.float32))
    out, lse = torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens_t, return_lse=True,
                                        **kwargs)
    check_fp8(out, lse, q, keys, values, {"k": k_scale, "v": v_scale}, torch.bfloat16, causal=True,
              qo_indptr=qo_indptr, kv_indptr=indptr_of(kv_lens, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_dtype", [E4M3, E5M2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_finite_code_reaches_the_output_exactly(device, kv_dtype, out_dtype, cuda_backend):
    """One key: the weight is exactly 1, so out is that key's V row times v_scale, rounded once to the
    output dtype. With every finite code in V's row this checks the in-kernel conversion code by code."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(kv_dtype)
    finite = codes[torch.isfinite(codes.float())]
    row = torch.zeros(256, dtype=kv_dtype)
    row[:finite.numel()] = finite
    v = row.view(1, 1, 256).to(device)
    k = torch.zeros(1, 1, 256, dtype=kv_dtype, device=device)
    q = torch.randn(3, 2, 256).to(kv_dtype).to(device)
    v_scale = torch.tensor(0.75, device=device)
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(q, k, v, v_scale=v_scale, out_dtype=out_dtype)
        return
    out = torch_attn.prefill(q, k, v, v_scale=v_scale, out_dtype=out_dtype)
    expected = (row.float() * 0.75).to(out_dtype).view(1, 1, 256).expand(3, 2, 256)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_outlier_channels_with_per_head_scales(device, cuda_backend):
    """K with a few channels 100x larger (as real K caches have): per-head scales keep the rest of the
    channels in the codes' range; the result matches the reference on the dequantized inputs."""
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(777, 4, 128, generator=gen)
    k[..., [3, 70, 101]] *= 100
    k, k_scale = quantize(k, E4M3, True)
    v, v_scale = quantize(torch.randn(777, 4, 128, generator=gen), E4M3, True)
    q = torch.randn(129, 16, 128, generator=gen).to(torch.bfloat16)
    args = [t.to(device) for t in (q, k, v)]
    scales = {"k": k_scale.to(device), "v": v_scale.to(device)}
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(*args, **scale_kwargs(scales))
        return
    out, lse = torch_attn.prefill(*args, causal=True, return_lse=True, **scale_kwargs(scales))
    check_fp8(out, lse, *args, scales, torch.bfloat16, causal=True)


@pytest.mark.parametrize("device", DEVICES)
def test_out_overload_writes_the_output_dtype(device, cuda_backend):
    gen = torch.Generator().manual_seed(2)
    q, k, v, scales = fp8_inputs(100, 300, 8, 2, 64, 64, E4M3, E4M3, True, device, gen)
    out = torch.full((100, 8, 64), math.nan, dtype=torch.float16, device=device)
    lse = torch.full((100, 8), math.nan, device=device)
    if wgmma_refuses(device, cuda_backend):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            torch_attn.prefill(q, k, v, out_dtype=torch.float16, out=out, lse=lse, **scale_kwargs(scales))
        return
    torch_attn.prefill(q, k, v, causal=True, out_dtype=torch.float16, out=out, lse=lse, **scale_kwargs(scales))
    check_fp8(out, lse, q, k, v, scales, torch.float16, causal=True)


def test_opcheck_and_compile_with_fp8_arguments():
    """The fp8 arguments through the dispatcher's checks (fake kernel, autograd registration, AOT
    dispatch) and torch.compile (fullgraph: the fake kernel gives the output dtype). opcheck's
    test_schema is left out: it perturbs the inputs with a multiply that torch has no fp8 kernel
    for; the schema itself is checked on bf16 inputs in test_op_registration.py."""
    gen = torch.Generator().manual_seed(1)
    q, k, v, scales = fp8_inputs(9, 17, 4, 2, 64, 64, E4M3, E5M2, True, "cpu", gen)
    kwargs = dict(causal=True, out_dtype=torch.float16, **scale_kwargs(scales))
    torch.library.opcheck(torch.ops.attn.prefill.default, (q, k, v), kwargs,
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    compiled = torch.compile(lambda *a: torch_attn.prefill(*a, **kwargs), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), torch_attn.prefill(q, k, v, **kwargs))


def test_fake_kernel_gives_the_output_dtype_on_cuda_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(8, 4, 64, dtype=E4M3, device="cuda")
        k = torch.empty(8, 2, 64, dtype=E4M3, device="cuda")
        out, lse = torch.ops.attn.prefill(q, k, k, out_dtype=torch.float16)
        assert out.dtype == torch.float16 and lse.dtype == torch.float32
        out, _ = torch.ops.attn.prefill(q.to(torch.bfloat16), k, k)
        assert out.dtype == torch.bfloat16
