"""The build: CUDA sources compile to real sm_80 / sm_90a code without spills, the
loader's cache and lock behave, and the CLI answers (runs in CI, no GPU needed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from torch_attn import _build_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC = _build_spec.load_spec()
CUDA_HOME = _build_spec.find_cuda_home()
needs_nvcc = pytest.mark.skipif(CUDA_HOME is None, reason="nvcc not found")
# The generated instantiations (one kernel variant each) and the spec's other .cu files, as built.
GENERATED_DIR = Path(tempfile.gettempdir()) / "torch_attn_test_instantiations"
KERNEL_SOURCES = _build_spec.write_instantiations(GENERATED_DIR) + [
    str(ROOT / s) for s in SPEC["cuda_sources"] if s.endswith(".cu")]
# {cap, no cap} x {dense, paged}, and chunked (no cap) x {dense, paged}: launch_utils.cuh.
KERNELS_PER_INSTANTIATION = 6


def compile_kernel(source: str, arch: str, out_dir: Path) -> tuple[str, Path, str]:
    """nvcc -c for one real architecture; returns (source, object, ptxas report)."""
    obj = out_dir / f"{Path(source).stem}_{arch}.o"
    cmd = [str(Path(CUDA_HOME) / "bin" / "nvcc"), "-c", str(ROOT / source), "-o", str(obj), "-std=c++17",
           *SPEC["nvcc_flags"], *_build_spec.gencode_flags((arch,)), "-Xptxas=-v", "-I", str(ROOT / "csrc")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{source} for {arch}:\n{done.stderr[-3000:]}"
    return source, obj, done.stderr


@pytest.fixture(scope="module")
def compiled_kernels(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("nvcc")
    jobs = [(s, a) for s in KERNEL_SOURCES for a in ("8.0", "9.0a")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda job: (job[1], *compile_kernel(job[0], job[1], out_dir)), jobs))


def spills_by_kernel(report: str) -> dict[str, int]:
    """ptxas -v report -> {mangled kernel name: bytes of spill stores}."""
    spills, kernel = {}, None
    for line in report.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            kernel = entry.group(1)
        stores = re.search(r"(\d+) bytes spill stores", line)
        if stores and kernel:
            spills[kernel] = int(stores.group(1))
    return spills


# Spills put values in local memory: a slowdown, never silent. The kernels must not
# spill on sm_90a, except these, each bounded so that it cannot grow unnoticed (their
# measured speed is in docs/perf-log.md):
#   * mma.sync, paged: registers for page lookups; 68-84 bytes at head dim 128;
#   * mma.sync, head dim 128 (on sm_90a; on sm_80, its target, it spills 16-24 bytes, and
#     did before): 8 bytes, per-item values stored once and reloaded between the loops
#     over masked and unmasked tiles, never inside one;
#   * wgmma, head dim 64: three consumer groups share the register file (160 registers
#     each, 32 for the producer): 20 bytes with the soft cap, 12 paged, 32 paged with the
#     soft cap (the producer's per-item values, masked tiles), 4 with neither (the
#     producer, on the ragged-batch path of finding an item);
#   * wgmma, (192, 192) tile, paged: 8 bytes (the (192, 128) tile: none);
#   * wgmma, head dim 256, paged: 4 bytes (a consumer's warp index, stored once and
#     loaded once per item); with the soft cap 20 (the rescale factors that stay live from
#     one tile step into the next, kPvWaitInNextStep, and the Q descriptor reloaded once
#     per tile step; 48 in the commit whose soft-capped paged batch measured 313.0 against
#     311.6 us without, H100, base clocks).
#   * the chunked variants (no soft cap): CHUNKED_SPILL_BOUNDS, by kernel, tile and paged (40-92 bytes
#     at widths 64, 128 (mma.sync) and 256 (wgmma), none at the wgmma kernel's 128 and (192, 128)).
# Mangled names: prefill_kernel / prefill_sm90_kernel<Traits, kSoftCap, kPaged, kChunked> end in
# "ELb<cap>ELb<paged>ELb<chunked>EEEv"; the traits name the head-dim tile ("Li64EEE"; the wgmma kernel's its
# q/k and v widths, "Li192ELi128EEE": the q/k width keys the bounds).
MMA_SYNC_PAGED_SPILL_BOUND = 128
MMA_SYNC_DENSE_SPILL_BOUNDS = {128: 8}  # head-dim tile -> bytes; other dense mma.sync kernels: 0
# (head-dim tile, soft cap, paged) -> bytes; other wgmma kernels: 0.
WGMMA_SPILL_BOUNDS = {(64, False, False): 4, (64, True, False): 20, (64, False, True): 12, (64, True, True): 32,
                      (192, False, True): 8, (192, True, True): 8, (256, False, True): 4, (256, True, True): 20}


# ("wgmma" or "mma.sync", head-dim tile, paged) -> bytes; other chunked kernels: 0. The per-row chunk
# bounds (mask.cuh) cost registers where the kernels were already tight: a cost to chunked calls only.
CHUNKED_SPILL_BOUNDS = {("mma.sync", 64, False): 64, ("mma.sync", 128, False): 92, ("mma.sync", 128, True): 88,
                        ("wgmma", 64, False): 64, ("wgmma", 64, True): 56, ("wgmma", 192, True): 8,
                        ("wgmma", 256, False): 40, ("wgmma", 256, True): 68}


# The mma.sync kernel with fp8 K/V (PrefillTraits<.., kFp8KV = true>), by head-dim tile, on sm_90a: the
# per-tile conversion of the thread's own K/V chunks and the descale factor take registers the bf16
# kernel had not left spare (255 used): 112-156 bytes at 128 (all six variants), up to 28 at 256 and 4 at
# 64; a cost to fp8 calls only, bounded here (their speed: not yet measured on a GPU).
FP8_KV_SPILL_BOUNDS = {64: 4, 96: 0, 128: 160, 192: 0, 256: 32, 512: 0}


def variant_flags(mangled: str) -> tuple[bool, bool, bool]:
    """(soft cap, paged, chunked) of a kernel's mangled name."""
    flags = re.search(r"ELb([01])ELb([01])ELb([01])EEEv", mangled)
    assert flags, f"no <kSoftCap, kPaged, kChunked> in {mangled}"
    return flags.group(1) == "1", flags.group(2) == "1", flags.group(3) == "1"


def spill_bound(mangled: str) -> int:
    soft_cap, paged, chunked = variant_flags(mangled)
    assert not (soft_cap and chunked), f"a chunked kernel with the soft cap is built: {mangled}"
    tile = re.search(r"Li(\d+)E(?:Li\d+E|Lb([01])E)?EE", mangled)
    assert tile, f"no head-dim tile in {mangled}"
    width = int(tile.group(1))
    wgmma = "PrefillSm90Traits" in mangled
    if tile.group(2) == "1":  # the mma.sync kernel with fp8 K/V
        return FP8_KV_SPILL_BOUNDS[width]
    if chunked:
        return CHUNKED_SPILL_BOUNDS.get(("wgmma" if wgmma else "mma.sync", width, paged), 0)
    if wgmma:
        return WGMMA_SPILL_BOUNDS.get((width, soft_cap, paged), 0)
    return MMA_SYNC_PAGED_SPILL_BOUND if paged else MMA_SYNC_DENSE_SPILL_BOUNDS.get(width, 0)


@needs_nvcc
def test_kernels_compile_without_spills(compiled_kernels):
    assert len(compiled_kernels) == 2 * len(KERNEL_SOURCES)
    for arch, source, _obj, report in compiled_kernels:
        if "instantiations" not in source or arch != "9.0a":
            continue
        spills = spills_by_kernel(report)
        assert len(spills) == KERNELS_PER_INSTANTIATION, f"expected 6 kernels in {source}, got {list(spills)}"
        for kernel, stores in spills.items():
            bound = spill_bound(kernel)
            assert stores <= bound, f"{kernel} in {source} spills {stores} bytes on sm_90a:\n{report}"
        # ptxas serialises wgmmas (waiting after each one) where registers of one in flight
        # are touched, and says so (C7513-C7519: "serialized", "is injected"); it cost the
        # wgmma kernel 20% once. No warning may appear.
        assert "serialized" not in report and "is injected" not in report, f"wgmma serialised in {source}:\n{report}"


@needs_nvcc
def test_sass_uses_tensor_cores_and_async_copies(compiled_kernels):
    cuobjdump = shutil.which("cuobjdump") or str(Path(CUDA_HOME) / "bin" / "cuobjdump")
    if not Path(cuobjdump).exists():
        try:
            import triton  # CUDA torch ships cuobjdump with triton
            cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
        except ImportError:
            pytest.skip("cuobjdump not found")
    def functions_of(source_name):
        obj = next(o for arch, s, o, _ in compiled_kernels if arch == "9.0a" and s.endswith(source_name))
        sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
        functions = dict(re.findall(r"Function : (\w+)\n(.*?)(?=\n\s*Function : |\Z)", sass, re.S))
        assert len(functions) == KERNELS_PER_INSTANTIATION, list(functions)
        return functions

    def check(functions, instructions):
        for name, body in functions.items():
            for instruction in instructions(name):
                assert instruction in body, f"{instruction} missing from {name}"
            if spill_bound(name) == 0:  # no local memory at all
                assert "STL" not in body and "LDL" not in body, f"local-memory traffic in {name}"

    # mma.sync kernel: tensor cores through HMMA, ldmatrix, cp.async (LDGSTS), exp2 on the MUFU.
    check(functions_of("instantiations/prefill_bf16_hd128.cu"),
          lambda name: ("HMMA.16816.F32.BF16", "LDSM.16.M88.4", "LDSM.16.MT88.4", "LDGSTS.E.BYPASS.128", "MUFU.EX2"))
    # mma.sync kernel with fp8 K/V: the same, with the codes converted by the e4m3 unpack instruction (sm_89+).
    check(functions_of("instantiations/prefill_bf16_fp8kv_hd128.cu"),
          lambda name: ("HMMA.16816.F32.BF16", "LDSM.16.MT88.4", "LDGSTS.E.BYPASS.128", "F2FP.F16.E4M3.UNPACK_B",
                        "F2FP.BF16.F32.PACK_AB"))
    # wgmma kernel: warpgroup MMAs (HGMMA, V transposed for P V), mbarriers (SYNCS), register
    # reallocation, every tile through the copy engine (UTMALDG).
    check(functions_of("instantiations/prefill_sm90_bf16_hd128.cu"),
          lambda name: ("HGMMA.64x128x16.F32.BF16", "gdesc", ".tnspB", "SYNCS.PHASECHK", "USETMAXREG", "UTMALDG",
                        "MUFU.EX2"))


def test_instantiations_follow_the_tile_lists():
    """One translation unit per kernel variant, generated from the traits headers' tile lists (the
    host's launcher table reads the same lists): every tile x dtype (x K/V storage for mma.sync), once."""
    units = _build_spec.instantiations()
    names = [u.name for u in units]
    assert len(set(names)) == len(names)
    sm80 = _build_spec.tile_list("kernels/sm80/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE")
    sm90 = _build_spec.tile_list("kernels/sm90/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE")
    assert (64,) in sm80 and (192, 128) in sm90
    assert len(units) == 2 * len(sm90) + 4 * len(sm80)
    assert "TORCH_ATTN_INSTANTIATE_PREFILL(kFloat16, 96, true)" in {u.call for u in units}
    assert "TORCH_ATTN_INSTANTIATE_PREFILL_SM90(kBFloat16, 192, 128)" in {u.call for u in units}
    assert not any("instantiations" in s for s in SPEC["cuda_sources"])
    paths = _build_spec.write_instantiations(GENERATED_DIR)
    mtimes = [Path(p).stat().st_mtime_ns for p in paths]
    assert _build_spec.write_instantiations(GENERATED_DIR) == paths  # unchanged text: files left alone
    assert [Path(p).stat().st_mtime_ns for p in paths] == mtimes


def test_arch_list_parsing_and_gencode():
    assert _build_spec.parse_arch_list("8.0;9.0a") == ("8.0", "9.0a")
    assert _build_spec.parse_arch_list(" 8.6 , 9.0a ") == ("8.6", "9.0a")
    assert _build_spec.gencode_flags(("8.0", "9.0a")) == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(ValueError, match="TORCH_ATTN_CUDA_ARCH_LIST"):
        _build_spec.parse_arch_list("sm_90")


def test_sm90a_define_follows_the_arch_list():
    """The host may pick the wgmma kernel only in builds with sm_90a code."""
    with_sm90a = _build_spec.BuildConfig(True, ("8.0", "9.0a"), "/usr/local/cuda", "", "test")
    without = _build_spec.BuildConfig(True, ("8.0", "9.0"), "/usr/local/cuda", "", "test")
    for flags in (_build_spec.cxx_flags, _build_spec.nvcc_flags):
        assert "-DTORCH_ATTN_HAS_SM90A" in flags(SPEC, with_sm90a)
        assert "-DTORCH_ATTN_HAS_SM90A" not in flags(SPEC, without)


def test_empty_arch_list_means_cpu_only(monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_CUDA_ARCH_LIST", "")
    config = _build_spec.resolve_build_config()
    assert not config.with_cuda and "empty" in config.reason


def test_cache_key_follows_flags_and_archs(monkeypatch):
    base = _build_spec.BuildConfig(True, ("9.0a",), "/usr/local/cuda", "", "test")
    other_arch = _build_spec.BuildConfig(True, ("8.0", "9.0a"), "/usr/local/cuda", "", "test")
    debug = _build_spec.BuildConfig(True, ("9.0a",), "/usr/local/cuda", "1", "test")
    keys = {_build_spec.cache_key(SPEC, c) for c in (base, other_arch, debug)}
    assert len(keys) == 3
    assert _build_spec.cache_key(SPEC, base) == _build_spec.cache_key(SPEC, base)


@needs_nvcc
def test_find_cuda_home_sees_through_wrapper_scripts():
    assert (Path(CUDA_HOME) / "bin" / "nvcc").exists()
    assert (Path(CUDA_HOME) / "include" / "cuda_runtime_api.h").exists()


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)


def test_cold_build_then_silent_cached_import(tmp_path, monkeypatch):
    """A fresh cache builds (one line of progress, then the time), survives a stale
    lock file a killed build left behind, and later imports are silent. A CPU-only build
    builds no kernel family, even when asked to prebuild them all."""
    monkeypatch.setenv("TORCH_ATTN_CUDA_ARCH_LIST", "")  # a CPU-only build: the quickest real build
    env = dict(os.environ, TORCH_ATTN_CACHE_DIR=str(tmp_path), TORCH_ATTN_PREBUILD="all")
    key_dir = _build_spec.cache_key(SPEC, _build_spec.resolve_build_config())
    (tmp_path / key_dir).mkdir()
    (tmp_path / key_dir / "lock").write_text("")  # torch's baton from a killed build
    cold = run_python("import torch_attn, torch; print(torch.ops.attn.prefill)", env)
    assert cold.returncode == 0, cold.stderr[-3000:]
    progress = [line for line in cold.stderr.splitlines() if line.startswith("torch_attn:")]
    assert len(progress) == 2 and "one-time" in progress[0] and re.match(r"torch_attn: built in [\d.]+ s", progress[1])
    cached = run_python("import torch_attn", env)
    assert cached.returncode == 0 and cached.stderr == "" and cached.stdout == ""
    assert_no_static_libstdcxx(next(tmp_path.glob("*/torch_attn_C.so")))
    assert list(tmp_path.glob("*/families")) == []


def assert_no_static_libstdcxx(library: Path) -> None:
    """The library uses the process's shared libstdc++: a copy of its iostreams linked into it
    formats numbers through another copy's locale (seen on a GPU machine: the first error
    message with a number in it crashed the process)."""
    if shutil.which("nm"):
        symbols = subprocess.run(["nm", "-C", "--defined-only", str(library)], capture_output=True, text=True).stdout
        assert "std::ostream::_M_insert<long>" not in symbols, f"libstdc++ linked statically into {library}"


@pytest.mark.skipif(shutil.which("c++") is None or shutil.which("readelf") is None, reason="no c++ or readelf")
def test_a_compiler_that_links_libstdcxx_statically_is_not_used(tmp_path, monkeypatch):
    """CXX naming a compiler that links libstdc++ statically (a wrapper adding -static-libstdc++,
    as on a GPU machine's image): the build uses the c++ on PATH instead, and error messages
    keep their numbers."""
    wrapper = tmp_path / "bin" / "g++"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("c++")} -static-libstdc++ "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("TORCH_ATTN_CUDA_ARCH_LIST", "")
    env = dict(os.environ, TORCH_ATTN_CACHE_DIR=str(tmp_path / "cache"), CXX=str(wrapper))
    code = ("import torch, torch_attn\n"
            "try:\n    torch.ops.attn.prefill(torch.zeros(2, 64), torch.zeros(2, 64), torch.zeros(2, 64))\n"
            "except ValueError as e:\n    print(e)\n")
    done = run_python(code, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"CXX={wrapper} links libstdc++ statically; building with" in done.stderr
    assert "got 2-D" in done.stdout, done.stdout
    assert_no_static_libstdcxx(next((tmp_path / "cache").glob("*/torch_attn_C.so")))
