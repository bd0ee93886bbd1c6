"""Malformed calls (tests/malformed_calls.py) raise a clear exception naming the argument:
the real op on CPU and its fake kernel with the same type and the same message, and the
fake kernel on fake CUDA tensors (no GPU needed) where the CUDA path has demands of its own.
The real op on the GPU: tests/test_bad_input_cuda.py, each case in a process of its own."""
from __future__ import annotations

import pytest
import torch

import torch_attn
from malformed_calls import BAD, CLAMPED, call, fake_message, raised

CPU_CASES = [c for c in BAD if "cpu" in c.devices]
CUDA_FAKE_CASES = [c for c in BAD if "cuda" in c.devices and c.fake_sees_it]


def test_the_table_covers_every_op():
    ops = {c.build("cpu")[0] for c in CPU_CASES}
    assert ops == {"prefill", "prefill_paged", "prefill.out", "prefill_paged.out", "merge_states"}
    assert len(BAD) + len(CLAMPED) >= 60


@pytest.mark.parametrize("case", CPU_CASES, ids=[c.id for c in CPU_CASES])
def test_real_op_on_cpu_and_fake_raise_the_same(case):
    exc, message = raised(lambda: call(case.build, "cpu"))
    assert exc == case.exc.__name__, message
    assert case.names in message and message.startswith("attn.")
    if case.fake_sees_it:
        assert fake_message(case, "cpu") == (exc, message)


@pytest.mark.parametrize("case", CUDA_FAKE_CASES, ids=[c.id for c in CUDA_FAKE_CASES])
def test_fake_kernel_on_cuda_tensors_rejects(case):
    gpus = torch.cuda.device_count()
    if 0 < gpus < case.needs_gpus:  # (without a GPU, fake tensors take any device index)
        pytest.skip(f"fake tensors on cuda:{case.needs_gpus - 1} need that device here ({gpus} GPU)")
    exc, message = fake_message(case, "cuda")
    assert exc == case.exc.__name__, message
    assert case.names in message


@pytest.mark.parametrize("case", CLAMPED, ids=[c.id for c in CLAMPED])
def test_bad_device_data_is_checked_on_cpu(case):
    """On CPU the values are at hand, so they are checked (on CUDA that would need a
    device-to-host sync; the kernels clamp them into bounds instead)."""
    for kwargs in case.kwargs_variants:
        exc, message = raised(lambda: call(case.build, "cpu", kwargs))
        assert exc == "ValueError" and case.cpu_names in message, message


def test_wrapper_names_the_argument_that_requires_grad():
    q, k, v = (torch.randn(4, 2, 64) for _ in range(3))
    with pytest.raises(RuntimeError, match="attn.prefill: k requires grad, but torch_attn is inference-only"):
        torch_attn.prefill(q, k.requires_grad_(True), v)
    with torch.no_grad():
        assert torch_attn.prefill(q, k, v).shape == q.shape


@pytest.mark.parametrize("case_id", ["head_dim_300", "gqa_not_divisible", "window_left_minus_5", "k_dtype_mismatch",
                                     "paged_kv_layout_lowercase", "merge_lse_a_shape"])
def test_torch_compile_raises_the_op_message(case_id):
    """Under torch.compile the fake kernel raises while tracing; the message reaches the user."""
    from malformed_calls import BAD_BY_ID, op_of

    case = BAD_BY_ID[case_id]
    name, args, kwargs = case.build("cpu")
    _, message = raised(lambda: call(case.build, "cpu"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op_of(name)(*a, **kwargs), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception) as error:
        compiled(*args)
    assert message in str(error.value)
