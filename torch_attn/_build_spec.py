"""What to build and how: one spec (csrc/build_spec.json) for the JIT loader, setup.py and CMake.

Also decides whether this machine gets CUDA kernels, and for which architectures.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


def source_root() -> Path:
    """The folder holding csrc/: the repository in a source checkout, or the copy
    that setup.py packs next to the Python files in a wheel."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, here / "_src"):
        if (root / "csrc" / "build_spec.json").is_file():
            return root
    raise FileNotFoundError(f"torch_attn: csrc/build_spec.json not found next to {here}")


def load_spec() -> dict:
    return json.loads((source_root() / "csrc" / "build_spec.json").read_text())


@dataclass(frozen=True)
class BuildConfig:
    with_cuda: bool
    arch_list: tuple[str, ...]  # e.g. ("8.0", "9.0a"); empty for a CPU-only build
    cuda_home: str | None
    debug: str  # "" (off), "1" (-lineinfo) or "2" (-G -g)
    reason: str  # why this build has or lacks CUDA kernels, for the notice and `info`

    @property
    def arch_names(self) -> str:
        return ", ".join("sm_" + a.replace(".", "") for a in self.arch_list) or "CPU only"


def find_cuda_home() -> str | None:
    """The CUDA toolkit root. The nvcc on PATH may be a wrapper script, so ask
    nvcc itself where it lives (`nvcc -v --dryrun` prints TOP=<root>/bin/..)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").exists():
            return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "-v", "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True,
                                 text=True, timeout=60)
            match = re.search(r"TOP=(\S+)", dry.stdout + dry.stderr)
            if match:
                return str(Path(match.group(1)).resolve())
        except (OSError, subprocess.SubprocessError):
            pass
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


def parse_arch_list(text: str) -> tuple[str, ...]:
    """'8.0;9.0a' or '8.0 9.0a' -> ('8.0', '9.0a')."""
    archs = tuple(a for a in re.split(r"[;,\s]+", text.strip()) if a)
    for arch in archs:
        if not re.fullmatch(r"\d+\.\d+a?", arch):
            raise ValueError(f"TORCH_ATTN_CUDA_ARCH_LIST: expected entries like 8.0 or 9.0a, got {arch!r}")
    return archs


def visible_gpu_archs() -> tuple[str, ...]:
    """Architectures of the visible GPUs; Hopper (9.0) gets its arch-specific 9.0a."""
    archs = set()
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        archs.add(f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else ""))
    return tuple(sorted(archs))


def resolve_build_config() -> BuildConfig:
    debug = os.environ.get("TORCH_ATTN_DEBUG", "").strip()
    if debug not in ("", "0", "1", "2"):
        raise ValueError(f"TORCH_ATTN_DEBUG: expected 0, 1 (-lineinfo) or 2 (-G), got {debug!r}")
    debug = "" if debug == "0" else debug

    def cpu_only(reason: str) -> BuildConfig:
        return BuildConfig(False, (), None, debug, reason)

    if torch.version.cuda is None:
        return cpu_only(f"torch {torch.__version__} is a CPU-only build")
    requested = os.environ.get("TORCH_ATTN_CUDA_ARCH_LIST")
    if requested is not None:
        archs = parse_arch_list(requested)
        if not archs:
            return cpu_only("TORCH_ATTN_CUDA_ARCH_LIST is empty")
        reason = "TORCH_ATTN_CUDA_ARCH_LIST"
    elif torch.cuda.is_available():
        archs = visible_gpu_archs()
        reason = "the visible GPU"
    else:
        return cpu_only("no GPU is visible and TORCH_ATTN_CUDA_ARCH_LIST is not set")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return cpu_only("nvcc was not found (put it on PATH or set CUDA_HOME)")
    return BuildConfig(True, archs, cuda_home, debug, reason)


_LIBSTDCXX_PROBE = ("#include <sstream>\n"
                    "std::string format_long(long x) { std::ostringstream s; s << x; return s.str(); }\n")


def links_shared_libstdcxx(cxx: str) -> bool:
    """Whether a shared library that `cxx` links needs the shared libstdc++ (the one torch and
    this process use) rather than carrying a static copy: links a tiny one and reads its
    dynamic section. Without readelf (binutils), assumes it does."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return True
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        source.write_text(_LIBSTDCXX_PROBE)
        try:
            subprocess.run([cxx, "-shared", "-fPIC", str(source), "-o", str(library)], capture_output=True,
                           timeout=120, check=True)
            dynamic = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return True  # no verdict: the build itself will say what is wrong with the compiler
    return "libstdc++.so" in dynamic


@dataclass(frozen=True)
class HostCompiler:
    """The host compilers of a build: None keeps the environment's (CXX, CC, else c++)."""
    cxx: str | None = None
    cc: str | None = None  # also nvcc's host compiler (torch passes CC as -ccbin)
    note: str = ""  # why the environment's compiler is not used


def resolve_host_compiler() -> HostCompiler:
    """A C++ compiler that links the shared libstdc++. One that links it statically (a CXX
    wrapper adding -static-libstdc++, seen on a GPU machine) gives the library its own copy of
    the iostreams, which formats numbers through the other copy's locale: the first error
    message with a number in it crashed the process. Then the c++ on PATH builds instead."""
    requested = os.environ.get("CXX") or "c++"
    if links_shared_libstdcxx(requested):
        return HostCompiler()
    for name in ("c++", "g++"):
        cxx = shutil.which(name)
        if cxx and cxx != shutil.which(requested) and links_shared_libstdcxx(cxx):
            cc = next((c for c in (Path(cxx).with_name("cc"), Path(cxx).with_name("gcc")) if c.exists()), None)
            return HostCompiler(cxx, str(cc) if cc else None,
                                f"CXX={requested} links libstdc++ statically; building with {cxx}")
    return HostCompiler(note=f"CXX={requested} links libstdc++ statically and no c++ on PATH links it shared: "
                             "error messages may crash this library; set CXX to a compiler that links it shared")


def _set_environment(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextmanager
def host_compiler_environment(compiler: HostCompiler):
    """CXX and CC (nvcc's host compiler) set to `compiler`'s for the build, then restored."""
    if compiler.cxx is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in ("CXX", "CC")}
    try:
        _set_environment("CXX", compiler.cxx)
        _set_environment("CC", compiler.cc)  # None: unset, nvcc picks its default
        yield
    finally:
        for name, value in saved.items():
            _set_environment(name, value)


def gencode_flags(arch_list: tuple[str, ...]) -> list[str]:
    """Real machine code (code=sm_XX) for each arch: a PTX-only build would accept
    broken inline asm until a driver JIT-compiles it on a user's machine."""
    flags = []
    for arch in arch_list:
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


@dataclass(frozen=True)
class Instantiation:
    """One kernel variant's translation unit: `call` (a macro of `header`) instantiates its launcher."""
    name: str  # the file's stem, e.g. prefill_sm90_bf16_hd192_v128
    header: str
    call: str
    family: str  # the kernel family whose library holds it, e.g. sm90_hd192_v128
    registration: str  # its launcher's entry in the family's registration (csrc/launcher_registry.h)

    def text(self) -> str:
        return ("// Generated by torch_attn/_build_spec.py from the kernels' tile lists: one kernel variant per\n"
                "// translation unit, so builds compile them in parallel.\n"
                f'#include "{self.header}"\n{self.call}\n')


_DTYPES = (("bf16", "kBFloat16"), ("fp16", "kFloat16"))


def tile_list(header: str, macro: str) -> list[tuple[int, ...]]:
    """The tiles a kernel is compiled for: the arguments of `#define macro(X) X(..) X(..)` in header."""
    text = (source_root() / "csrc" / header).read_text()
    found = re.search(rf"#define {macro}\(X\)((?:\s*X\([^)]*\))+)", text)
    if not found:
        raise RuntimeError(f"torch_attn: no tile list {macro} in csrc/{header}")
    return [tuple(int(v) for v in args.split(",")) for args in re.findall(r"X\(([^)]*)\)", found.group(1))]


def family_name(backend: str, width: int, width_v: int) -> str:
    """A kernel family's name, e.g. sm80_hd128, sm90_hd192_v128 (csrc/launcher_registry.cpp spells it alike)."""
    return f"{backend}_hd{width}" + (f"_v{width_v}" if width_v != width else "")


def instantiations() -> list[Instantiation]:
    """Every kernel variant, generated from the kernels' own tile lists (the X-macros of the traits
    headers, which the host's launcher table reads too): a tile added there is built and launched.
    The wgmma kernel per (q/k, v) tile and dtype; the mma.sync kernel per tile, dtype and K/V storage
    (the compute dtype, or fp8 codes). Widest first: ninja starts jobs in this order, so the longest
    translation units do not start last."""
    units = []
    for tile in sorted(tile_list("kernels/sm90/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE"),
                       key=lambda t: -sum(t)):
        width, width_v = tile
        family = family_name("sm90", width, width_v)
        for dtype, kind in _DTYPES:
            units.append(Instantiation(
                f"prefill_sm90_{dtype}_{family.removeprefix('sm90_')}", "launch/sm90_launch.cuh",
                f"TORCH_ATTN_INSTANTIATE_PREFILL_SM90({kind}, {width}, {width_v})", family,
                f"{{Backend::kSm90, {{ScalarKind::{kind}, false}}, {width}, {width_v}, "
                f"&launch_prefill_sm90<ScalarKind::{kind}, {width}, {width_v}>}}"))
    for (width,) in sorted(tile_list("kernels/sm80/prefill_traits.cuh", "TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE"),
                           key=lambda t: -t[0]):
        for dtype, kind in _DTYPES:
            for fp8_kv in ("false", "true"):
                units.append(Instantiation(
                    f"prefill_{dtype}{'_fp8kv' if fp8_kv == 'true' else ''}_hd{width}", "launch/sm80_launch.cuh",
                    f"TORCH_ATTN_INSTANTIATE_PREFILL({kind}, {width}, {fp8_kv})", family_name("sm80", width, width),
                    f"{{Backend::kSm80, {{ScalarKind::{kind}, {fp8_kv}}}, {width}, {width}, "
                    f"&launch_prefill<ScalarKind::{kind}, {width}, {fp8_kv}>}}"))
    return units


@dataclass(frozen=True)
class KernelFamily:
    """Kernel variants built into one library and loaded together: one kernel at one head-dim tile, in
    every dtype and K/V storage (2 translation units for the wgmma kernel, 4 for mma.sync). A model
    needs one or two (on an H100, the wgmma family of its head dim, and mma.sync's where it declines)."""
    name: str
    units: tuple[Instantiation, ...]

    @property
    def backend(self) -> str:
        return self.name.split("_")[0]

    @property
    def library_name(self) -> str:
        return f"torch_attn_{self.name}"

    def registration_text(self) -> str:
        entries = "".join(f"    {u.registration},\n" for u in self.units)
        return ("// Generated by torch_attn/_build_spec.py: registers kernel family " + self.name + "'s launchers\n"
                "// in the host library's table (csrc/launcher_registry.h) as the library loads.\n"
                '#include "launcher_registry.h"\n\nnamespace torch_attn {\nnamespace {\n'
                f"[[maybe_unused]] const bool registered = register_launchers({{\n{entries}}});\n"
                "}  // namespace\n}  // namespace torch_attn\n")


def kernel_families() -> list[KernelFamily]:
    """Every family, widest first, from instantiations()."""
    grouped: dict[str, list[Instantiation]] = {}
    for unit in instantiations():
        grouped.setdefault(unit.family, []).append(unit)
    return [KernelFamily(name, tuple(units)) for name, units in grouped.items()]


def buildable(family: KernelFamily, config: BuildConfig) -> str | None:
    """Why `config` cannot build the family (None: it can): the wgmma kernel needs sm_90a code."""
    if not config.with_cuda:
        return f"this torch_attn build is CPU-only ({config.reason})"
    if family.backend == "sm90" and "9.0a" not in config.arch_list:
        return f"the wgmma kernel needs 9.0a in the arch list (TORCH_ATTN_CUDA_ARCH_LIST), got {config.arch_names}"
    return None


def parse_families(text: str, config: BuildConfig) -> list[KernelFamily]:
    """A list of families (TORCH_ATTN_PREBUILD, `python -m torch_attn build`): names (sm90_hd128),
    kernel:width (sm90:128, sm80:64), kernel:width/v_width (sm90:192/128), or `all` (every family this
    config can build), separated by commas or spaces. Unknown names and families the config cannot
    build raise a ValueError."""
    families = {f.name: f for f in kernel_families()}
    chosen: dict[str, KernelFamily] = {}
    for entry in (e for e in re.split(r"[,\s]+", text.strip()) if e):
        if entry == "all":
            chosen.update((f.name, f) for f in families.values() if buildable(f, config) is None)
            continue
        short = re.fullmatch(r"(sm80|sm90):(\d+)(?:/(\d+))?", entry)
        name = family_name(short[1], int(short[2]), int(short[3] or short[2])) if short else entry
        if name not in families:
            raise ValueError(f"torch_attn: no kernel family {entry!r}; the families are all, "
                             + ", ".join(families) + " (or kernel:width, e.g. sm90:128, sm90:192/128)")
        why_not = buildable(families[name], config)
        if why_not:
            raise ValueError(f"torch_attn: cannot build kernel family {name}: {why_not}")
        chosen[name] = families[name]
    return list(chosen.values())


def _write_if_changed(path: Path, text: str) -> str:
    """Rewrites the file only where its text changed (ninja goes by modification times)."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def write_instantiations(directory: Path, units: list[Instantiation] | None = None) -> list[str]:
    """The instantiations' translation units (default: every one) in directory/instantiations;
    returns their paths."""
    target = Path(directory) / "instantiations"
    target.mkdir(parents=True, exist_ok=True)
    units = instantiations() if units is None else units
    return [_write_if_changed(target / f"{u.name}.cu", u.text()) for u in units]


def family_sources(family: KernelFamily, directory: Path) -> list[str]:
    """A family's library: its instantiations (widest first) and its registration, written into directory."""
    units = write_instantiations(directory, list(family.units))
    return units + [_write_if_changed(Path(directory) / f"register_{family.name}.cpp", family.registration_text())]


def kernel_sources(directory: Path) -> list[str]:
    """Every family's sources, for builds that link them all into one library (setup.py, CMake)."""
    return [path for family in kernel_families() for path in family_sources(family, directory)]


def host_sources(spec: dict, config: BuildConfig) -> list[str]:
    """The host library: ops, checks, CPU path, CUDA glue and the launcher table (no kernels)."""
    names = (spec["cuda_sources"] if config.with_cuda else spec["cpu_only_sources"]) + spec["common_sources"]
    return [str(source_root() / name) for name in names]


def all_sources(spec: dict, config: BuildConfig, generated_dir: Path) -> list[str]:
    """The one library of setup.py's AOT build: every family (written into generated_dir) leading, slowest
    first (ninja starts jobs in this order, so the long translation units do not start last), then the host."""
    return (kernel_sources(generated_dir) if config.with_cuda else []) + host_sources(spec, config)


def include_dirs(spec: dict) -> list[str]:
    return [str(source_root() / d) for d in spec["include_dirs"]]


def arch_defines(spec: dict, config: BuildConfig) -> list[str]:
    """-DTORCH_ATTN_HAS_SM90A when the build has sm_90a code (the wgmma kernel)."""
    return [spec["sm90a_define"]] if "9.0a" in config.arch_list else []


def cxx_flags(spec: dict, config: BuildConfig) -> list[str]:
    return list(spec["cxx_flags"]) + arch_defines(spec, config) + (["-g"] if config.debug else [])


def nvcc_flags(spec: dict, config: BuildConfig) -> list[str]:
    return (list(spec["nvcc_flags"]) + arch_defines(spec, config) + spec["debug_flags"].get(config.debug, []) +
            gencode_flags(config.arch_list))


def cache_key(spec: dict, config: BuildConfig) -> str:
    """Changes whenever anything that shapes the binary changes: every file under
    csrc/, the flags, the torch / CUDA / Python versions and the arch list."""
    digest = hashlib.sha256()
    csrc = source_root() / "csrc"
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(csrc)).encode())
        digest.update(path.read_bytes())
    for part in ([u.text() for u in instantiations()], [f.registration_text() for f in kernel_families()],
                 cxx_flags(spec, config), nvcc_flags(spec, config),
                 os.environ.get("CXX"), os.environ.get("CC"),
                 config.with_cuda, config.cuda_home,
                 torch.__version__, torch.version.cuda, sys.version, config.arch_list):
        digest.update(repr(part).encode())
    return digest.hexdigest()[:20]


if __name__ == "__main__":
    # CMake (CMakeLists.txt): `python3 torch_attn/_build_spec.py kernel-sources DIR` writes every family's
    # translation units (instantiations and registrations) and prints their paths, ';'-separated (a CMake
    # list); `instantiations DIR` only the instantiations (tools/sass_snapshot.sh).
    writers = {"instantiations": write_instantiations, "kernel-sources": kernel_sources}
    if len(sys.argv) != 3 or sys.argv[1] not in writers:
        sys.exit("usage: python3 torch_attn/_build_spec.py {instantiations,kernel-sources} DIR")
    print(";".join(writers[sys.argv[1]](Path(sys.argv[2]))), end="")
