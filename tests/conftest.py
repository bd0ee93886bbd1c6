"""Shared test helpers: the accuracy rule, poisoning, input factories."""
from __future__ import annotations

import math

import pytest
import torch

import torch_attn  # noqa: F401  (loads the ops)
from torch_attn.reference import prefill_reference

HAS_GPU = torch.cuda.is_available()

# FlashAttention's rule: max |ours - ref64| <= 2 * max |pytorch_lowp - ref64| + EPS, where
# pytorch_lowp is the same computation in PyTorch at the input dtype; EPS covers
# shapes where that baseline happens to be exact (one key: out is a V row).
EPS = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-4}
LSE_TOL = 2e-3  # absolute, in natural-log units, on finite LSE values


# Every GPU test runs once per CUDA kernel: the mma.sync kernel ("sm80", any GPU) and
# the wgmma kernel ("sm90", compute capability 9.0 with an sm_90a build), forced with
# TORCH_ATTN_BACKEND. Other tests see the default ("auto").
CUDA_BACKENDS = ["sm80", "sm90"]


def pytest_generate_tests(metafunc):
    # GPU tests: marked as a whole, or parametrized over a `device` that includes "cuda".
    if "cuda_backend" in metafunc.fixturenames and (metafunc.definition.get_closest_marker("gpu")
                                                     or "device" in metafunc.fixturenames):
        metafunc.parametrize("cuda_backend", CUDA_BACKENDS, indirect=True)


def _runs_on_cpu(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("device") == "cpu"


def _backend_unavailable(name: str) -> str | None:
    """Why the forced backend cannot run here (None: it can)."""
    if not HAS_GPU:
        return "needs a CUDA GPU"
    try:
        q = torch.zeros(1, 1, 64, device="cuda", dtype=torch.bfloat16)
        torch_attn.prefill(q, q, q)
    except ValueError as error:
        return str(error)
    return None


_BACKEND_CHECKS: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def cuda_backend(request, monkeypatch):
    """Sets TORCH_ATTN_BACKEND for the test; skips where that kernel cannot run."""
    name = getattr(request, "param", "auto")
    monkeypatch.setenv("TORCH_ATTN_BACKEND", name)
    if name != "auto" and not _runs_on_cpu(request.node):
        if name not in _BACKEND_CHECKS:
            _BACKEND_CHECKS[name] = _backend_unavailable(name)
        if _BACKEND_CHECKS[name] is not None:
            pytest.skip(f"backend {name}: {_BACKEND_CHECKS[name]}")
    return name


WGMMA_WIDEST_HEAD_DIM = 256  # wider head dims run on the mma.sync kernel (a forced sm90 refuses them)


def _head_dims_of(item) -> list[int]:
    """The head dims a case names: its `head_dim(s)`/`dims` parameters and its `head_dims` marker."""
    dims = [d for marker in item.iter_markers("head_dims") for d in marker.args]
    for name, value in getattr(item, "callspec", None).params.items() if hasattr(item, "callspec") else ():
        if "head_dim" in name or name == "dims":
            dims += [d for d in (value if isinstance(value, tuple) else (value,)) if isinstance(d, int)]
    return dims


def _past_wgmma_tiles(item) -> bool:
    """A forced-wgmma case of a head dim it has no tile for: the refusal has its own test
    (test_prefill_cuda.py::test_head_dims_past_wgmma_tiles), the math runs under sm80."""
    callspec = getattr(item, "callspec", None)
    return (callspec is not None and callspec.params.get("cuda_backend") == "sm90"
            and any(d > WGMMA_WIDEST_HEAD_DIM for d in _head_dims_of(item)))


def pytest_collection_modifyitems(config, items):
    # A CPU case needs no second CUDA backend.
    dropped = [i for i in items if (_runs_on_cpu(i) and i.callspec.params.get("cuda_backend") != CUDA_BACKENDS[0])
               or _past_wgmma_tiles(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)


def prefill_kernels_launched(run) -> list[str]:
    """Names of the GPU events with "prefill" in them (our kernels) that `run()` launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if "prefill" in e.name]


def make_qkv(qo_len, kv_len, num_qo_heads, num_kv_heads, head_dim, dtype, device, batch=None, generator=None,
             head_dim_v=None):
    """Fresh random q, k, v ([batch,] tokens, heads, head_dim); v's head dim is head_dim_v if given."""
    lead = () if batch is None else (batch,)
    def rand(tokens, heads, width=head_dim):
        return torch.randn(*lead, tokens, heads, width, generator=generator).to(device=device, dtype=dtype)
    return rand(qo_len, num_qo_heads), rand(kv_len, num_kv_heads), rand(kv_len, num_kv_heads, head_dim_v or head_dim)


def check_against_reference(out, lse, q, k, v, out_atol=None, **kwargs):
    """Asserts out/lse match the float64 reference within FlashAttention's rule, or
    within out_atol where PyTorch at the inputs' dtype is no yardstick."""
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == q.dtype
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32
    ref_out, ref_lse = prefill_reference(q, k, v, **kwargs)
    assert torch.isfinite(out).all(), "non-finite output"
    err = (out.double() - ref_out).abs().max().item() if out.numel() else 0.0
    allowed = EPS[q.dtype] if out_atol is None else out_atol
    if q.dtype != torch.float32 and out.numel() and out_atol is None:
        base_out, _ = prefill_reference(q, k, v, compute_dtype=q.dtype, **kwargs)
        allowed += 2 * (base_out.double() - ref_out).abs().max().item()
    assert err <= allowed, f"max |out - ref| = {err:.3e} > allowed {allowed:.3e}"
    # LSE: -inf exactly where the reference row sees no key, close elsewhere.
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "LSE -inf pattern differs"
    assert not torch.isnan(lse).any()
    finite = torch.isfinite(ref_lse)
    if finite.any():
        lse_err = (lse.double()[finite] - ref_lse[finite]).abs().max().item()
        assert lse_err <= LSE_TOL, f"max |lse - ref| = {lse_err:.3e}"
    # Rows that see nothing are exactly 0.
    empty = torch.isneginf(ref_lse)
    if empty.any():
        assert (out[empty] == 0).all()


def poison_cuda_allocator(*shapes_dtypes):
    """Fills the blocks the op's outputs will most likely get with NaN, so that an
    element the kernel forgets to write shows up as NaN instead of stale zeros."""
    blocks = [torch.full(shape, math.nan, dtype=dtype, device="cuda") for shape, dtype in shapes_dtypes]
    del blocks


def poisoned_view(batch, tokens, heads, head_dim, dtype, poison, extra_rows, width=None):
    """Random [batch, tokens, heads, head_dim] data as a view into a buffer whose `extra_rows`
    rows after each sequence, and columns past head_dim (up to `width`), hold `poison`:
    memory a kernel must never let reach its output."""
    width = head_dim if width is None else width
    buf = torch.full((batch, tokens + extra_rows, heads, width), poison, dtype=dtype, device="cuda")
    buf[:, :tokens, :, :head_dim] = torch.randn(batch, tokens, heads, head_dim, device="cuda").to(dtype)
    return buf[:, :tokens, :, :head_dim]


def indptr_of(lens, device):
    """cu_seqlens-style int32 [len(lens) + 1] offsets of packed sequences."""
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def mask_kwargs(mask):
    """A partial mask spec (test tables) -> every masking keyword of prefill, defaults filled in."""
    return dict(causal=mask.get("causal", False), sm_scale=mask.get("sm_scale"),
                window_left=mask.get("window_left", -1),
                chunk_size=mask.get("chunk_size", 0), logits_soft_cap=mask.get("logits_soft_cap", 0.0))


def ragged_batch(qo_lens, kv_lens, num_qo_heads, num_kv_heads, head_dim, dtype, device, generator=None,
                 head_dim_v=None):
    """Packed q/k/v and int32 indptrs for sequences of the given lengths."""
    q, k, v = make_qkv(sum(qo_lens), sum(kv_lens), num_qo_heads, num_kv_heads, head_dim, dtype, device,
                       generator=generator, head_dim_v=head_dim_v)
    return q, k, v, indptr_of(qo_lens, device), indptr_of(kv_lens, device)
