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
    print(f"cache dir    {_loader.cache_root()}")
    return 0


def cmd_build(_args) -> int:
    start = time.perf_counter()
    import torch_attn

    print(f"torch_attn library ready in {time.perf_counter() - start:.1f} s: {torch_attn.LIBRARY.path}")
    return 0


def cmd_demo(args) -> int:
    from torch_attn.demo import run_demo

    return run_demo(device=args.device, seq_len=args.seq_len)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch_attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, archs, cache path and which backends are built").set_defaults(fn=cmd_info)
    sub.add_parser("build", help="build (or load) the library now, e.g. in a Dockerfile").set_defaults(fn=cmd_build)
    demo = sub.add_parser("demo", help="a Llama-shaped prefill on the best device, checked against float64")
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    demo.add_argument("--seq-len", type=int, default=None, help="tokens (default: 4096 on CUDA, 1024 on CPU)")
    demo.set_defaults(fn=cmd_demo)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
