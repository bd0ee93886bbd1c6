"""Loads the compiled ops: a prebuilt library (pip install with TORCH_ATTN_AOT=1, every kernel in it),
else JIT builds from the cache, compiling them the first time: at import the host library (ops,
checks, CPU path, dispatch, the launcher table; no kernels), and each kernel family
(_build_spec.KernelFamily) into a library of its own when a call first needs it (the op asks
attn::_load_kernels, torch_attn/_lazy_kernels.py) or TORCH_ATTN_PREBUILD names it.

Cache layout: <cache root>/<cache_key>/ holds the host library, families/<family>/ each family's,
which links against it. A build runs under an exclusive flock in its folder (the OS drops it if the
process dies, so a killed build leaves no stale lock), re-checks after taking it, and marks success
with a file written last.
"""
from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import _build_spec

_DONE_MARKER = "BUILD_OK"
PREBUILD_VARIABLE = "TORCH_ATTN_PREBUILD"


@dataclass(frozen=True)
class LoadedLibrary:
    path: Path
    config: _build_spec.BuildConfig | None  # None for a prebuilt (AOT) library
    built_now: bool


def cache_root() -> Path:
    return Path(os.environ.get("TORCH_ATTN_CACHE_DIR") or Path.home() / ".cache" / "torch_attn").expanduser()


def verbose() -> bool:
    return os.environ.get("TORCH_ATTN_VERBOSE", "") not in ("", "0")


def prebuilt_library() -> Path | None:
    """The library setup.py builds into the package (TORCH_ATTN_AOT=1 pip install .)."""
    found = sorted(Path(__file__).resolve().parent.glob("_C*.so"))
    return found[0] if found else None


@contextmanager
def exclusive_lock(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_built(build_dir: Path) -> bool:
    return (build_dir / _DONE_MARKER).is_file()


@contextmanager
def build_environment(config: _build_spec.BuildConfig):
    """CUDA_HOME and the host compilers for builds; set once around a batch of (parallel) builds."""
    import torch.utils.cpp_extension as cpp_extension

    if config.cuda_home:
        # torch guesses CUDA_HOME from `which nvcc`, which is wrong when nvcc is a wrapper script.
        os.environ["CUDA_HOME"] = config.cuda_home
        cpp_extension.CUDA_HOME = config.cuda_home
    compiler = _build_spec.resolve_host_compiler()
    if compiler.note:
        print(f"torch_attn: {compiler.note}", file=sys.stderr, flush=True)
    with _build_spec.host_compiler_environment(compiler):
        yield


def compile_library(name: str, sources: list[str], config: _build_spec.BuildConfig, build_dir: Path, what: str,
                    extra_ldflags: list[str] | None = None) -> None:
    """Compiles (and loads) one library into build_dir with ninja (parallel over the sources), inside
    build_environment, then writes the marker."""
    import torch.utils.cpp_extension as cpp_extension

    spec = _build_spec.load_spec()
    # We hold the exclusive lock: a baton file torch left behind from a killed build is stale.
    (build_dir / "lock").unlink(missing_ok=True)
    print(f"torch_attn: compiling {what}; a one-time cost, cached in {build_dir}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=_build_spec.cxx_flags(spec, config),
        extra_cuda_cflags=_build_spec.nvcc_flags(spec, config),
        extra_ldflags=extra_ldflags,
        extra_include_paths=_build_spec.include_dirs(spec),
        build_directory=str(build_dir),
        with_cuda=config.with_cuda,
        is_python_module=False,
        verbose=verbose(),
    )
    (build_dir / _DONE_MARKER).write_text(f"{config}\n")
    # (named: families may build side by side)
    print(f"torch_attn: built in {time.perf_counter() - start:.1f} s: {name}", file=sys.stderr, flush=True)


def load_or_build(build_dir: Path, library: Path, build: Callable[[], None]) -> bool:
    """Loads build_dir's library, running `build` (which compiles and loads it) under the folder's lock
    first where it is not built; returns whether it was built now."""
    if not is_built(build_dir):
        build_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(build_dir / "torch_attn.lock"):
            if not is_built(build_dir):  # another process may have built it meanwhile
                build()
                return True
    torch.ops.load_library(str(library))
    return False


_host: LoadedLibrary | None = None


def load_library() -> LoadedLibrary:
    """The host library (with every kernel, if prebuilt), then the families TORCH_ATTN_PREBUILD names."""
    global _host
    prebuilt = prebuilt_library()
    if prebuilt is not None:
        torch.ops.load_library(str(prebuilt))
        _host = LoadedLibrary(prebuilt, None, False)
        return _host
    spec = _build_spec.load_spec()
    config = _build_spec.resolve_build_config()
    build_dir = cache_root() / _build_spec.cache_key(spec, config)
    library = build_dir / f"{spec['name']}.so"
    what = f"the host library for {config.arch_names}" if config.with_cuda else \
        f"the CPU-only library ({config.reason})"

    def build():
        with build_environment(config):
            compile_library(spec["name"], _build_spec.host_sources(spec, config), config, build_dir, what)

    _host = LoadedLibrary(library, config, load_or_build(build_dir, library, build))
    prebuild = os.environ.get(PREBUILD_VARIABLE, "")
    if prebuild.strip():
        load_families(_build_spec.parse_families(prebuild, config))
    return _host


def family_dir(host: LoadedLibrary, family: _build_spec.KernelFamily) -> Path:
    return host.path.parent / "families" / family.name


def loaded_families() -> set[str]:
    """Families whose launchers have all registered (the host library's table says)."""
    if not hasattr(torch.ops.attn, "_kernel_families"):  # CPU-only builds have no table
        return set()
    return set(torch.ops.attn._kernel_families())


class CaptureBuildError(RuntimeError):
    """A kernel family that is not built was needed while a CUDA graph was being captured."""


def capture_refusal(name: str) -> CaptureBuildError:
    return CaptureBuildError(
        f"torch_attn: kernel family {name} is not built, and the current CUDA stream is capturing a graph: "
        "torch_attn never compiles during capture. Run the same call once before capturing (a warm-up), or "
        f"prebuild the family: {PREBUILD_VARIABLE}={name} at import, or `python -m torch_attn build {name}`")


_build_lock = threading.Lock()  # one batch of builds at a time: build_environment sets process-wide variables


def load_families(families: list[_build_spec.KernelFamily], capturing: bool = False) -> None:
    """Loads each family, building those not in the cache (several at once, a ninja each). While a graph is
    being captured (`capturing`), a family that is not built raises CaptureBuildError instead."""
    host = _host
    if host is None or host.config is None:
        missing = [f.name for f in families if f.name not in loaded_families()]
        if missing:
            raise RuntimeError(f"torch_attn: the library at {host and host.path} has no kernel family {missing}")
        return
    with _build_lock:
        todo = [f for f in families if f.name not in loaded_families()]
        for family in todo:
            why_not = _build_spec.buildable(family, host.config)
            if why_not:
                raise ValueError(f"torch_attn: cannot build kernel family {family.name}: {why_not}")
            if capturing and not is_built(family_dir(host, family)):
                raise capture_refusal(family.name)
        if not todo:
            return
        compiles = any(not is_built(family_dir(host, family)) for family in todo)
        with build_environment(host.config) if compiles else nullcontext():
            workers = max(1, min(len(todo), (os.cpu_count() or 1) // 4))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(lambda family: _load_family(host, family), todo))
    missing = [f.name for f in todo if f.name not in loaded_families()]
    if missing:
        raise RuntimeError(f"torch_attn: kernel families {missing} loaded without registering all their launchers "
                           f"(libraries built from other sources than {host.path}; clear the cache)")


def _load_family(host: LoadedLibrary, family: _build_spec.KernelFamily) -> None:
    build_dir = family_dir(host, family)
    library = build_dir / f"{family.library_name}.so"
    # The family's registration calls into the host library: linked by name, found through the rpath
    # (the loader reuses the host library this process loaded from that path).
    ldflags = [f"-L{host.path.parent}", f"-l:{host.path.name}", f"-Wl,-rpath,{host.path.parent}"]

    def build():
        compile_library(family.library_name, _build_spec.family_sources(family, build_dir), host.config, build_dir,
                        f"kernel family {family.name} for {host.config.arch_names}", ldflags)

    load_or_build(build_dir, library, build)


def load_family_by_name(name: str, capturing: bool) -> None:
    """attn::_load_kernels: the C++ dispatch's request for a family it found no launcher of."""
    families = {f.name: f for f in _build_spec.kernel_families()}
    if name not in families:
        raise ValueError(f"torch_attn: no kernel family {name!r} (the families: {', '.join(families)})")
    load_families([families[name]], capturing)
