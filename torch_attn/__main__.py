"""python -m torch_attn {info, build, demo}"""
from __future__ import annotations

import argparse
import os
import sys
import time


def cmd_info(_args) -> int:
    import platform

    import torch

    import torch_attn
    from torch_attn import _build_spec, _loader

    lib = torch_attn.LIBRARY
    print(f"torch_attn   {torch_attn.__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__} (CUDA {torch.version.cuda})")
    available = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []
    print(f"GPUs         {', '.join(gpus) or 'none visible'}")
    print(f"library      {lib.path}")
    if lib.config is None:
        print("build        prebuilt (pip install with TORCH_ATTN_AOT=1)")
    else:
        print(f"build        {'CUDA + CPU' if lib.config.with_cuda else 'CPU only'}: {lib.config.reason}")
        print(f"archs        {lib.config.arch_names}")
        if lib.config.with_cuda:
            kernels = "mma.sync (sm_80+)" + (", wgmma (sm_90a, chosen on compute capability 9.0)"
                                             if "9.0a" in lib.config.arch_list else "")
            print(f"kernels      {kernels}; TORCH_ATTN_BACKEND={os.environ.get('TORCH_ATTN_BACKEND', 'auto')}")
        print(f"CUDA home    {lib.config.cuda_home or _build_spec.find_cuda_home() or 'not found'}")
        print(f"debug        {lib.config.debug or 'off'}")
        if lib.config.with_cuda:
            print(f"families     {family_states(lib)}")
    print(f"cache dir    {_loader.cache_root()}")
    return 0


def family_states(lib) -> str:
    """Each kernel family this build can have, and whether it is loaded, built (in the cache) or neither."""
    from torch_attn import _build_spec, _loader

    loaded = _loader.loaded_families()
    states = []
    for family in _build_spec.parse_families("all", lib.config):
        built = _loader.is_built(_loader.family_dir(lib, family))
        states.append(f"{family.name} ({'loaded' if family.name in loaded else 'built' if built else 'not built'})")
    return ", ".join(states) or "none"


def cmd_build(args) -> int:
    start = time.perf_counter()
    import torch_attn
    from torch_attn import _build_spec, _loader

    lib = torch_attn.LIBRARY
    if lib.config is None:
        print(f"torch_attn: prebuilt library with every kernel family: {lib.path}")
        return 0
    try:
        families = _build_spec.parse_families(" ".join(args.families) or "all", lib.config)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    _loader.load_families(families)
    names = ", ".join(f.name for f in families) or "no kernel families (a CPU-only build)"
    print(f"torch_attn ready in {time.perf_counter() - start:.1f} s: {lib.path}; {names}")
    return 0


def cmd_demo(args) -> int:
    from torch_attn.demo import run_demo

    return run_demo(device=args.device, seq_len=args.seq_len)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch_attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, archs, cache path and which backends are built").set_defaults(fn=cmd_info)
    build = sub.add_parser("build", help="build the host library and kernel families into the cache now, e.g. in a "
                                         "Dockerfile")
    build.add_argument("families", nargs="*", help="all (the default), family names (sm90_hd128) or kernel:width "
                                                   "(sm90:128, sm80:64, sm90:192/128)")
    build.set_defaults(fn=cmd_build)
    demo = sub.add_parser("demo", help="a Llama-shaped prefill on the best device, checked against float64")
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    demo.add_argument("--seq-len", type=int, default=None, help="tokens (default: 4096 on CUDA, 1024 on CPU)")
    demo.set_defaults(fn=cmd_demo)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
