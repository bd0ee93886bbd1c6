"""Kernel families built on first use, on a GPU: a first call straight to torch.ops.attn.prefill builds its
family from inside the op; under CUDA-graph capture a family that is not built is refused by name, and
capture works once a warm-up call has built it. Each case runs in a fresh process over a fresh cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("torch_attn_cache")  # one host library build for the module


def run_python(code: str, cache_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TORCH_ATTN_CACHE_DIR=str(cache_dir))
    env.pop("TORCH_ATTN_PREBUILD", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def expected_family(cuda_backend: str, head_dim: int) -> str:
    return f"{cuda_backend}_hd{head_dim}"  # the tiles 64 and 128 exist in both kernels, q/k width = v width


SETUP = """
import torch, torch_attn
from torch_attn.reference import prefill_reference
q, k, v = (torch.randn(200, 4, {d}, device="cuda", dtype=torch.bfloat16) for _ in range(3))
"""


def test_first_call_builds_its_family(cache_dir, cuda_backend):
    family = expected_family(cuda_backend, 64)
    code = SETUP.format(d=64) + """
print(torch.ops.attn._kernel_families())
out, lse = torch.ops.attn.prefill(q, k, v, causal=True)  # the op itself, no Python wrapper
ref, _ = prefill_reference(q, k, v, causal=True)
print(torch.ops.attn._kernel_families(), (out.double() - ref).abs().max().item())
"""
    first = run_python(code, cache_dir)
    loaded_before, loaded_after = first.stdout.splitlines()
    assert loaded_before == "[]"
    assert loaded_after.startswith(f"['{family}']"), first.stdout
    assert float(loaded_after.split()[-1]) < 3e-2
    assert f"compiling kernel family {family}" in first.stderr
    again = run_python(code, cache_dir)
    assert "compiling" not in again.stderr and again.stdout.splitlines()[1].startswith(f"['{family}']")


def test_capture_refuses_a_missing_family_then_works_after_warm_up(cache_dir, cuda_backend):
    family = expected_family(cuda_backend, 128)
    code = SETUP.format(d=128) + """
def capture():
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, _ = torch.ops.attn.prefill(q, k, v, causal=True)
    return graph, out
try:
    capture()
    print("captured")
except RuntimeError as error:
    print("refused:", error)
print(torch.ops.attn._kernel_families())
expected, _ = torch.ops.attn.prefill(q, k, v, causal=True)  # the warm-up: builds the family
graph, out = capture()
graph.replay()
torch.cuda.synchronize()
print(torch.equal(out, expected))
"""
    done = run_python(code, cache_dir)
    refused, loaded, replayed = done.stdout.splitlines()
    # (the error crosses the C++ op on its way out: matched by its text, not its start)
    assert refused.startswith("refused:") and f"kernel family {family} is not built" in refused, done.stdout
    assert "capturing" in refused and f"TORCH_ATTN_PREBUILD={family}" in refused
    assert family not in loaded
    assert replayed == "True"
    assert done.stderr.count(f"compiling kernel family {family}") == 1
