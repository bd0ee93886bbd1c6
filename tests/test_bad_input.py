"""Malformed calls raise a clear exception naming the argument, in the real op (C++
checks) and in the fake kernel used by torch.compile (Python mirror) alike."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_attn  # noqa: F401


def qkv(sq=8, skv=8, hq=4, hkv=2, d=64, dtype=torch.bfloat16, batch=None):
    lead = () if batch is None else (batch,)
    return (torch.randn(*lead, sq, hq, d).to(dtype), torch.randn(*lead, skv, hkv, d).to(dtype),
            torch.randn(*lead, skv, hkv, d).to(dtype))


def indptr(*values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype)


def replace(args, i, value):
    args = list(args)
    args[i] = value
    return tuple(args)


q, k, v = qkv()
# (id, positional args, keyword args, exception type, the part of the message both sides share)
BAD_CALLS = [
    ("q_rank_2", (q[0], k[0], v[0]), {}, ValueError, "q must be 3-D"),
    ("q_rank_5", (q[None, None], k[None, None], v[None, None]), {}, ValueError, "q must be 3-D"),
    ("k_rank_mismatch", (q, k[None], v), {}, ValueError, "k must be 3-D"),
    ("v_rank_mismatch", (q, k, v[None]), {}, ValueError, "v must be 3-D"),
    ("int_dtype", (q.to(torch.int32), k.to(torch.int32), v.to(torch.int32)), {}, TypeError,
     "q must be float16, bfloat16 or float32"),
    ("float64_dtype", (q.double(), k.double(), v.double()), {}, TypeError, "q must be float16, bfloat16 or float32"),
    ("k_dtype_mismatch", (q, k.half(), v), {}, TypeError, "k must have q's dtype"),
    ("v_dtype_mismatch", (q, k, v.float()), {}, TypeError, "v must have q's dtype"),
    ("q_last_dim_strided", (qkv(d=128)[0][..., ::2], k, v), {}, ValueError,
     "q must have a contiguous last dimension"),
    ("k_last_dim_strided", (q, qkv(d=128)[1][..., ::2], v), {}, ValueError,
     "k must have a contiguous last dimension"),
    ("head_dim_not_multiple_of_8", qkv(d=60), {}, ValueError, "head_dim (q.size(-1)) must be a multiple of 8"),
    ("head_dim_too_large", qkv(d=264), {}, ValueError, "head_dim (q.size(-1)) must be a multiple of 8"),
    ("k_head_dim_mismatch", (q, qkv(d=128)[1], v), {}, ValueError, "k's head_dim must equal q's"),
    ("v_head_dim_mismatch", (q, k, qkv(d=128)[2]), {}, ValueError, "v's head_dim must equal q's"),
    ("gqa_not_divisible", qkv(hq=6, hkv=4), {}, ValueError, "must be a multiple of k's heads"),
    ("v_heads_mismatch", (q, k, qkv(hkv=4)[2]), {}, ValueError, "v must have k's number of heads"),
    ("zero_kv_heads", qkv(hq=4, hkv=0), {}, ValueError, "need at least one head"),
    ("window_left_below_minus_1", (q, k, v), dict(window_left=-2), ValueError, "window_left must be -1"),
    ("negative_soft_cap", (q, k, v), dict(logits_soft_cap=-1.0), ValueError, "logits_soft_cap must be >= 0"),
    ("zero_sm_scale", (q, k, v), dict(sm_scale=0.0), ValueError, "sm_scale must be a positive finite number"),
    ("nan_sm_scale", (q, k, v), dict(sm_scale=float("nan")), ValueError, "sm_scale must be a positive finite number"),
    ("only_qo_indptr", (q, k, v, indptr(0, 8), None), {}, ValueError,
     "qo_indptr and kv_indptr must be given together"),
    ("ragged_with_4d_q", (*qkv(batch=1), indptr(0, 8), indptr(0, 8)), {}, ValueError,
     "with qo_indptr/kv_indptr (a ragged batch)"),
    ("indptr_int64", (q, k, v, indptr(0, 8, dtype=torch.int64), indptr(0, 8)), {}, TypeError,
     "qo_indptr must be int32"),
    ("indptr_2d", (q, k, v, indptr(0, 8)[None], indptr(0, 8)), {}, ValueError, "qo_indptr must be a 1-D"),
    ("indptr_lengths_differ", (q, k, v, indptr(0, 4, 8), indptr(0, 8)), {}, ValueError,
     "kv_indptr must have qo_indptr's length"),
    ("indptr_other_device", (q, k, v, indptr(0, 8).to("meta"), indptr(0, 8)), {}, ValueError,
     "qo_indptr must be on q's device"),
    ("indptr_strided", (q, k, v, indptr(0, 0, 4, 4, 8, 8)[::2], indptr(0, 4, 8)), {}, ValueError,
     "qo_indptr must be contiguous"),
]


@pytest.mark.parametrize("args,kwargs,exc,message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_real_op_rejects(args, kwargs, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.attn.prefill(*args, **kwargs)


@pytest.mark.parametrize("args,kwargs,exc,message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_fake_kernel_rejects(args, kwargs, exc, message):
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
            torch.ops.attn.prefill(*fake_args, **kwargs)


@pytest.mark.parametrize("qo,kv,name", [((0, 9), (0, 8), "qo_indptr"), ((0, 5, 3), (0, 4, 8), "qo_indptr"),
                                        ((0, 4), (-1, 8), "kv_indptr")])
def test_indptr_values_checked_on_cpu(qo, kv, name):
    """On CPU the indptr values are at hand, so they are checked too (on CUDA that
    would need a device-to-host sync; the kernel clamps them into bounds instead)."""
    with pytest.raises(ValueError, match=f"{name} must be non-decreasing within"):
        torch.ops.attn.prefill(q, k, v, indptr(*qo), indptr(*kv))


def test_device_mismatch_is_named():
    """k on another device than q (meta stands in for a second device on a CPU-only machine)."""
    with pytest.raises(ValueError, match="k must be on q's device"):
        torch.ops.attn.prefill(q, k.to("meta"), v)


def test_wrapper_rejects_grad():
    qg = q.clone().float().requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        torch_attn.prefill(qg, k.float(), v.float())
