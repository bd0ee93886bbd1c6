"""Packaging. By default torch_attn installs as pure Python and compiles its ops on
first import (JIT, cached; kernel families on first use). With TORCH_ATTN_AOT=1 one
library with every kernel family is built now, from the same spec (csrc/build_spec.json):

    TORCH_ATTN_AOT=1 pip install --no-build-isolation .
"""
import contextlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package (torch_attn/_src/csrc) so a wheel can JIT-build."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "torch_attn" / "_src" / "csrc"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "csrc", target)


def aot_extension():
    # Load the spec module by path: importing the torch_attn package would load the library.
    spec_path = ROOT / "torch_attn" / "_build_spec.py"
    module_spec = importlib.util.spec_from_file_location("_torch_attn_build_spec", spec_path)
    build_spec = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = build_spec  # dataclasses look their module up there
    module_spec.loader.exec_module(build_spec)
    import torch.utils.cpp_extension as cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    spec = build_spec.load_spec()
    config = build_spec.resolve_build_config()
    if config.cuda_home:
        # torch guesses CUDA_HOME from `which nvcc`, which is wrong when nvcc is a wrapper script.
        os.environ["CUDA_HOME"] = config.cuda_home
        cpp_extension.CUDA_HOME = config.cuda_home
    compiler = build_spec.resolve_host_compiler()  # (one that links the shared libstdc++)
    if compiler.note:
        print(f"torch_attn: {compiler.note}")
    kind = CUDAExtension if config.with_cuda else CppExtension
    # One library with every kernel family (their launchers register as it loads): the families' translation
    # units are generated into build/ (relative paths: setuptools wants them).
    sources = [os.path.relpath(s, ROOT) for s in build_spec.all_sources(spec, config, ROOT / "build" / "generated")]
    args = {"cxx": build_spec.cxx_flags(spec, config)}
    if config.with_cuda:
        args["nvcc"] = build_spec.nvcc_flags(spec, config)
    ext = kind("torch_attn._C", sources, include_dirs=build_spec.include_dirs(spec), extra_compile_args=args)
    print(f"torch_attn: AOT build for {config.arch_names} ({config.reason})")
    return [ext], {"build_ext": BuildExtension, "build_py": BuildPyWithSources}, \
        build_spec.host_compiler_environment(compiler)


if os.environ.get("TORCH_ATTN_AOT") == "1":
    ext_modules, cmdclass, compiler_environment = aot_extension()
else:
    ext_modules, cmdclass, compiler_environment = [], {"build_py": BuildPyWithSources}, contextlib.nullcontext()

with compiler_environment:
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
