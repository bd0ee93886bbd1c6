"""The bad device data of tests/malformed_calls.py (indptrs, page ids and lengths out of
range: clamped on CUDA) on both kernels, for compute-sanitizer memcheck: no access may leave
the tensors. Run: compute-sanitizer --tool memcheck python tests/sanitize_malformed.py"""
import os

import torch

import torch_attn  # noqa: F401
from malformed_calls import CLAMPED, call

if __name__ == "__main__":
    torch.manual_seed(0)
    for backend in ("auto", "sm80"):
        os.environ["TORCH_ATTN_BACKEND"] = backend  # read on every call
        for case in CLAMPED:
            for kwargs in case.kwargs_variants:
                call(case.build, "cuda", kwargs)
    torch.cuda.synchronize()
    print(f"sanitize malformed done: {len(CLAMPED)} cases on 2 kernels")
