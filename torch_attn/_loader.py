"""Loads the compiled ops library: a prebuilt one (pip install with TORCH_ATTN_AOT=1),
else a JIT build from the cache, compiling it the first time.

The cache folder is keyed by torch_attn._build_spec.cache_key. A build runs under an
exclusive flock (the OS drops it if the process dies, so a killed build leaves no
stale lock), re-checks after taking it, and marks success with a file written last.
"""
from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import _build_spec

_DONE_MARKER = "BUILD_OK"


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


def build(spec: dict, config: _build_spec.BuildConfig, build_dir: Path) -> None:
    """Compiles the library into build_dir with ninja (parallel over the sources)."""
    import torch.utils.cpp_extension as cpp_extension

    if config.cuda_home:
        # torch guesses CUDA_HOME from `which nvcc`, which is wrong when nvcc is a wrapper script.
        os.environ["CUDA_HOME"] = config.cuda_home
        cpp_extension.CUDA_HOME = config.cuda_home
    # We hold the exclusive lock: a baton file torch left behind from a killed build is stale.
    (build_dir / "lock").unlink(missing_ok=True)
    what = f"CUDA kernels for {config.arch_names}" if config.with_cuda else f"the CPU-only library ({config.reason})"
    print(f"torch_attn: compiling {what}; a one-time cost, cached in {build_dir}", file=sys.stderr, flush=True)
    compiler = _build_spec.resolve_host_compiler()
    if compiler.note:
        print(f"torch_attn: {compiler.note}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with _build_spec.host_compiler_environment(compiler):
        cpp_extension.load(
            name=spec["name"],
            sources=_build_spec.sources(spec, config, build_dir),
            extra_cflags=_build_spec.cxx_flags(spec, config),
            extra_cuda_cflags=_build_spec.nvcc_flags(spec, config),
            extra_include_paths=_build_spec.include_dirs(spec),
            build_directory=str(build_dir),
            with_cuda=config.with_cuda,
            is_python_module=False,
            verbose=verbose(),
        )
    (build_dir / _DONE_MARKER).write_text(f"{config}\n")
    print(f"torch_attn: built in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def load_library() -> LoadedLibrary:
    prebuilt = prebuilt_library()
    if prebuilt is not None:
        torch.ops.load_library(str(prebuilt))
        return LoadedLibrary(prebuilt, None, False)
    spec = _build_spec.load_spec()
    config = _build_spec.resolve_build_config()
    build_dir = cache_root() / _build_spec.cache_key(spec, config)
    library = build_dir / f"{spec['name']}.so"
    if (build_dir / _DONE_MARKER).is_file():
        torch.ops.load_library(str(library))
        return LoadedLibrary(library, config, False)
    build_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(build_dir / "torch_attn.lock"):
        built_now = not (build_dir / _DONE_MARKER).is_file()  # another process may have built it meanwhile
        if built_now:
            build(spec, config, build_dir)  # cpp_extension.load also loads the library
        else:
            torch.ops.load_library(str(library))
    return LoadedLibrary(library, config, built_now)
