"""The CPU path against PyTorch's own CPU attention (F.scaled_dot_product_attention), same process,
same threads: a Llama-shaped causal prefill (1024 tokens, 32/8 heads, d128) and a ragged batch (8
sequences of 50-1000 tokens; SDPA has no ragged form: one call per sequence), each in float32 and bfloat16.
The two take turns call by call after one warm-up each; printed: the median of --repeats calls with the
[min-max] of the calls, and the ratio sdpa / torch_attn of the medians with the [min-max] of the ratios of
the calls that ran back to back (the machine may be shared: read the spread before the median).

    python benchmarks/bench_cpu.py [--repeats 9]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

import torch_attn


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """Per name, the wall-clock ms of `repeats` calls, the names taking turns call by call."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def sdpa(q, k, v):
    """[S, H, D] in, [S, H, D] out, bottom-right causal (Sq == Skv here), GQA."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                         enable_gqa=True)
    return out.transpose(0, 1)


def report(label: str, times: dict) -> None:
    ours, theirs = times["torch_attn"], times["sdpa"]
    ratios = [b / a for a, b in zip(ours, theirs)]

    def spread(values, fmt):
        return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"

    print(f"{label}: torch_attn {spread(ours, '{:.1f}')}, sdpa {spread(theirs, '{:.1f}')}, "
          f"ratio {statistics.median(theirs) / statistics.median(ours):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; ms per call, median [min-max] of "
          f"{args.repeats}")
    rng = random.Random(1)
    lengths = [rng.randint(50, 1000) for _ in range(8)]
    indptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1024, 32, 128, dtype=dtype)
        k, v = torch.randn(1024, 8, 128, dtype=dtype), torch.randn(1024, 8, 128, dtype=dtype)
        times = interleaved_ms({"torch_attn": lambda: torch_attn.prefill(q, k, v, causal=True),
                                "sdpa": lambda: sdpa(q, k, v)}, args.repeats)
        report(f"1024 tokens 32/8 d128 causal {dtype}", times)
        q = torch.randn(sum(lengths), 32, 128, dtype=dtype)
        k, v = torch.randn(sum(lengths), 8, 128, dtype=dtype), torch.randn(sum(lengths), 8, 128, dtype=dtype)
        parts = [(q[a:b], k[a:b], v[a:b]) for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist())]
        times = interleaved_ms({"torch_attn": lambda: torch_attn.prefill(q, k, v, causal=True, qo_indptr=indptr,
                                                                         kv_indptr=indptr),
                                "sdpa": lambda: [sdpa(*p) for p in parts]}, args.repeats)
        report(f"ragged {lengths} causal {dtype} (sdpa: one call per sequence)", times)


if __name__ == "__main__":
    main()
