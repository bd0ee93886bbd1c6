"""Lazy per-family kernel builds (CPU, runs in CI): the grouping of kernel variants into families and
their names, the lists TORCH_ATTN_PREBUILD and `python -m torch_attn build` take, the refusal to compile
while a CUDA graph is captured, the cache layout, and one real family built for sm_90a here and loaded
into a process next to the host library (loading a CUDA library needs no GPU; launching would)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torch_attn import __main__ as cli
from torch_attn import _build_spec, _loader

ROOT = Path(__file__).resolve().parent.parent
CUDA = _build_spec.BuildConfig(True, ("8.0", "9.0a"), "/usr/local/cuda", "", "test")
SM80_ONLY = _build_spec.BuildConfig(True, ("8.0",), "/usr/local/cuda", "", "test")
CPU_ONLY = _build_spec.BuildConfig(False, (), None, "", "no GPU")


def test_one_family_per_kernel_and_tile_with_every_dtype_and_kv_storage():
    families = _build_spec.kernel_families()
    sm80 = _build_spec.tile_list("kernels/sm80/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE")
    sm90 = _build_spec.tile_list("kernels/sm90/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE")
    assert len(families) == len(sm80) + len(sm90)  # a width added to a tile list is a family more
    by_name = {f.name: f for f in families}
    assert {u.name for u in by_name["sm80_hd128"].units} == {
        "prefill_bf16_hd128", "prefill_fp16_hd128", "prefill_bf16_fp8kv_hd128", "prefill_fp16_fp8kv_hd128"}
    assert {u.name for u in by_name["sm90_hd192_v128"].units} == {
        "prefill_sm90_bf16_hd192_v128", "prefill_sm90_fp16_hd192_v128"}
    assert by_name["sm90_hd64"].backend == "sm90" and by_name["sm90_hd64"].library_name == "torch_attn_sm90_hd64"
    # Every instantiation in exactly one family, and each family's registration names each of its launchers.
    units = [u for f in families for u in f.units]
    assert sorted(u.name for u in units) == sorted(u.name for u in _build_spec.instantiations())
    for family in families:
        text = family.registration_text()
        assert text.count("&launch_prefill") == len(family.units)
        assert all(u.registration in text for u in family.units)


def test_family_names_follow_the_tiles():
    assert _build_spec.family_name("sm80", 64, 64) == "sm80_hd64"
    assert _build_spec.family_name("sm90", 192, 128) == "sm90_hd192_v128"


def test_family_lists_take_names_shorthands_and_all():
    names = [f.name for f in _build_spec.parse_families("sm90:128, sm80:64 sm90:192/128,sm90_hd256", CUDA)]
    assert names == ["sm90_hd128", "sm80_hd64", "sm90_hd192_v128", "sm90_hd256"]
    assert [f.name for f in _build_spec.parse_families("sm80:64,sm80_hd64", CUDA)] == ["sm80_hd64"]
    every = _build_spec.kernel_families()
    assert len(_build_spec.parse_families("all", CUDA)) == len(every)
    # Without sm_90a code the wgmma kernel never runs: `all` leaves its families out, naming one raises.
    assert {f.backend for f in _build_spec.parse_families("all", SM80_ONLY)} == {"sm80"}
    with pytest.raises(ValueError, match="sm90_hd128: the wgmma kernel needs 9.0a"):
        _build_spec.parse_families("sm90:128", SM80_ONLY)
    assert _build_spec.parse_families("all", CPU_ONLY) == []
    with pytest.raises(ValueError, match="CPU-only"):
        _build_spec.parse_families("sm80:64", CPU_ONLY)
    with pytest.raises(ValueError, match="no kernel family 'sm90:100'.*sm90_hd128"):
        _build_spec.parse_families("sm90:100", CUDA)


def test_build_command_arguments(capsys):
    """`python -m torch_attn build` takes family lists; a bad one exits 2 naming it, before building."""
    assert cli.main(["build", "sm90:100"]) == 2
    assert "no kernel family 'sm90:100'" in capsys.readouterr().err
    if not _loader._host.config.with_cuda:  # this session's build (CI: CPU-only)
        assert cli.main(["build", "sm80:64"]) == 2 and "CPU-only" in capsys.readouterr().err
        assert cli.main(["build"]) == 0 and "no kernel families" in capsys.readouterr().out


class FakeFamilyLoads:
    """Stands in for the compile-and-dlopen of a family (the rest of the loader runs for real)."""

    def __init__(self, monkeypatch, tmp_path):
        self.loaded: list[str] = []
        self.host = _loader.LoadedLibrary(tmp_path / "key" / "torch_attn_C.so", CUDA, False)
        monkeypatch.setattr(_loader, "_host", self.host)
        monkeypatch.setattr(_loader, "_load_family", lambda host, family: self.loaded.append(family.name))
        monkeypatch.setattr(_loader, "loaded_families", lambda: set(self.loaded))

    def mark_built(self, name: str) -> None:
        directory = self.host.path.parent / "families" / name
        directory.mkdir(parents=True)
        (directory / _loader._DONE_MARKER).write_text("")


def test_capture_refuses_to_compile_a_family(monkeypatch, tmp_path):
    loads = FakeFamilyLoads(monkeypatch, tmp_path)
    with pytest.raises(_loader.CaptureBuildError) as refused:
        _loader.load_family_by_name("sm90_hd128", capturing=True)
    message = str(refused.value)
    assert "sm90_hd128 is not built" in message and "capturing" in message and "warm-up" in message
    assert "TORCH_ATTN_PREBUILD=sm90_hd128" in message and "python -m torch_attn build sm90_hd128" in message
    assert loads.loaded == []


def test_capture_loads_a_family_already_built(monkeypatch, tmp_path):
    """Loading a built family compiles nothing: allowed under capture (e.g. after `torch_attn build`)."""
    loads = FakeFamilyLoads(monkeypatch, tmp_path)
    loads.mark_built("sm80_hd64")
    _loader.load_family_by_name("sm80_hd64", capturing=True)
    _loader.load_family_by_name("sm80_hd64", capturing=True)  # loaded: nothing more to do
    assert loads.loaded == ["sm80_hd64"]


def test_outside_capture_a_missing_family_is_built(monkeypatch, tmp_path):
    loads = FakeFamilyLoads(monkeypatch, tmp_path)
    _loader.load_family_by_name("sm90_hd64", capturing=False)
    assert loads.loaded == ["sm90_hd64"]
    with pytest.raises(ValueError, match="no kernel family 'sm90_hd100'"):
        _loader.load_family_by_name("sm90_hd100", capturing=False)


def test_cache_layout(tmp_path):
    """Families live in the host library's cache folder (keyed like it), one folder each."""
    host = _loader.LoadedLibrary(tmp_path / "abc" / "torch_attn_C.so", CUDA, False)
    family = _build_spec.parse_families("sm90:64", CUDA)[0]
    assert _loader.family_dir(host, family) == tmp_path / "abc" / "families" / "sm90_hd64"
    sources = _build_spec.family_sources(family, tmp_path / "gen")
    assert [Path(s).name for s in sources] == [
        "prefill_sm90_bf16_hd64.cu", "prefill_sm90_fp16_hd64.cu", "register_sm90_hd64.cpp"]


def test_one_library_builds_take_every_family(tmp_path):
    """setup.py's AOT build and CMake link every family's sources, registrations included, into one library."""
    spec = _build_spec.load_spec()
    sources = _build_spec.all_sources(spec, CUDA, tmp_path)
    assert len([s for s in sources if s.endswith(".cu") and "instantiations" in s]) == len(
        _build_spec.instantiations())
    assert len([s for s in sources if "register_" in s]) == len(_build_spec.kernel_families())
    assert str(ROOT / "csrc" / "launcher_registry.cpp") in sources
    assert _build_spec.all_sources(spec, CPU_ONLY, tmp_path) == _build_spec.host_sources(spec, CPU_ONLY)


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)


@pytest.mark.skipif(_build_spec.find_cuda_home() is None, reason="nvcc not found")
def test_a_family_builds_for_sm90a_and_registers_its_launchers(tmp_path):
    """`torch_attn build sm90:64` for sm_90a (no GPU needed): the host library at import, then the family's
    library next to it; loaded into a fresh process after the host library, its launchers register in the
    host's table, and a later import loads no family until a call needs one."""
    env = dict(os.environ, TORCH_ATTN_CACHE_DIR=str(tmp_path), TORCH_ATTN_CUDA_ARCH_LIST="9.0a")
    env.pop("TORCH_ATTN_PREBUILD", None)
    built = subprocess.run([sys.executable, "-m", "torch_attn", "build", "sm90:64"], capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    assert re.search(r"compiling kernel family sm90_hd64 for sm_90a; a one-time cost", built.stderr), built.stderr
    (host_dir,) = tmp_path.iterdir()
    family_dir = host_dir / "families" / "sm90_hd64"
    assert sorted(p.name for p in host_dir.joinpath("families").iterdir()) == ["sm90_hd64"]
    assert (host_dir / _loader._DONE_MARKER).is_file() and (family_dir / _loader._DONE_MARKER).is_file()
    code = ("import torch\n"
            f"torch.ops.load_library({str(host_dir / 'torch_attn_C.so')!r})\n"
            "print(torch.ops.attn._kernel_families())\n"
            f"torch.ops.load_library({str(family_dir / 'torch_attn_sm90_hd64.so')!r})\n"
            "print(torch.ops.attn._kernel_families())\n")
    loaded = run_python(code, env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.splitlines() == ["[]", "['sm90_hd64']"]
    # Through the package: nothing loads at import; the op C++ calls on a miss loads the built family even
    # under capture, and refuses one that is not built.
    code = ("import torch, torch_attn\n"
            "print(torch.ops.attn._kernel_families())\n"
            "torch.ops.attn._load_kernels('sm90_hd64', True)\n"
            "print(torch.ops.attn._kernel_families())\n"
            "try:\n    torch.ops.attn._load_kernels('sm90_hd128', True)\n"
            "except RuntimeError as e:\n    print(type(e).__name__)\n")
    through = run_python(code, env)
    assert through.returncode == 0, through.stderr[-3000:]
    assert through.stdout.splitlines() == ["[]", "['sm90_hd64']", "CaptureBuildError"]
    assert through.stderr == ""  # a cached import and a cached family: silent
    assert not (host_dir / "families" / "sm90_hd128").exists()
