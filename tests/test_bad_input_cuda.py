"""Every malformed call of tests/malformed_calls.py on the GPU, each in a process of its own
(a crash fails its case, not the suite): it must raise the CPU path's exception, with the
fake kernel's message, and leave the CUDA context usable (a valid call in the same process
matches the reference). Bad device data (clamped on CUDA) must run to the end on both
kernels. The processes run side by side; each case's test reads its own result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import HAS_GPU
from malformed_calls import BAD, CLAMPED

# One xdist worker runs the whole module (with --dist loadgroup): its fixture runs every case in a pool of
# processes, and each worker that ran it would run them all again, side by side.
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU"),
              pytest.mark.xdist_group("malformed_calls")]

SCRIPT = Path(__file__).with_name("malformed_calls.py")
GPUS = torch.cuda.device_count() if HAS_GPU else 0
CUDA_CASES = [c for c in BAD if "cuda" in c.devices]
BACKENDS = ["auto", "sm80"]  # auto: the wgmma kernel on Hopper; sm80: the mma.sync kernel
JOBS = [(c.id, "auto") for c in CUDA_CASES if c.needs_gpus <= GPUS] + [(c.id, b) for c in CLAMPED for b in BACKENDS]


def run_in_subprocess(case_id: str, backend: str) -> dict:
    env = dict(os.environ, TORCH_ATTN_BACKEND=backend)
    done = subprocess.run([sys.executable, str(SCRIPT), case_id, "cuda"], capture_output=True, text=True, env=env,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"crashed": f"exit code {done.returncode}", "stderr": done.stderr[-2000:]}
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def results():
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        return dict(zip(JOBS, pool.map(lambda job: run_in_subprocess(*job), JOBS)))


@pytest.mark.parametrize("case", CUDA_CASES, ids=[c.id for c in CUDA_CASES])
def test_malformed_call_raises_on_cuda(case, results):
    if case.needs_gpus > GPUS:
        pytest.skip(f"needs {case.needs_gpus} GPUs, this machine has {GPUS}")
    result = results[(case.id, "auto")]
    assert "crashed" not in result, result
    assert result["exc"] == case.exc.__name__, result
    assert case.names in result["message"], result
    if case.fake_sees_it:
        assert (result["fake_exc"], result["fake_message"]) == (result["exc"], result["message"])
    assert result["valid_call_ok"], result


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CLAMPED, ids=[c.id for c in CLAMPED])
def test_bad_device_data_is_clamped_on_cuda(case, backend, results):
    result = results[(case.id, backend)]
    assert "crashed" not in result, result
    assert result["exc"] is None, result
    assert result["valid_call_ok"], result
