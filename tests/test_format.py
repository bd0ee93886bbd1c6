"""Format and lint, as CI checks them: ruff (pyproject.toml's [tool.ruff]) on the Python, clang-format
(.clang-format) on the C++ and CUDA sources. Both are pinned in the `test` extra, so that every machine
formats alike."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """The tool installed next to this Python (the `test` extra), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def tracked(*patterns: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist): every file of those kinds
        return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern.replace("*", "**/*")))
    return listed.stdout.split()


def test_python_passes_ruff():
    done = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cpp_and_cuda_are_clang_formatted():
    files = tracked("csrc/*.cpp", "csrc/*.h", "csrc/*.cu", "csrc/*.cuh", "tests/host/*.cu")
    assert len(files) > 20, files
    done = subprocess.run([tool("clang-format"), "--dry-run", "--Werror", *files], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]
