"""The CPU path against PyTorch's own CPU attention (F.scaled_dot_product_attention), same process,
same threads: a Llama-shaped causal prefill (1024 tokens, 32/8 heads, d128) in float32 and bfloat16,
and a ragged batch (8 sequences of 50-1000 tokens; SDPA has no ragged form: one call per sequence).
Wall-clock median of --repeats calls after one warm-up, the two taking turns.

    python benchmarks/bench_cpu.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

import torch_attn


def median_ms(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def sdpa(q, k, v):
    """[S, H, D] in, [S, H, D] out, bottom-right causal (Sq == Skv here), GQA."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True,
                                         enable_gqa=True)
    return out.transpose(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; ms per call (median of {args.repeats})")
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1024, 32, 128, dtype=dtype)
        k, v = torch.randn(1024, 8, 128, dtype=dtype), torch.randn(1024, 8, 128, dtype=dtype)
        ms = median_ms({"torch_attn": lambda: torch_attn.prefill(q, k, v, causal=True),
                        "sdpa": lambda: sdpa(q, k, v)}, args.repeats)
        print(f"1024 tokens 32/8 d128 causal {dtype}: torch_attn {ms['torch_attn']:.1f}, sdpa {ms['sdpa']:.1f}, "
              f"ratio {ms['sdpa'] / ms['torch_attn']:.2f}")
    rng = random.Random(1)
    lengths = [rng.randint(50, 1000) for _ in range(8)]
    indptr = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lengths), 32, 128)
    k, v = torch.randn(sum(lengths), 8, 128), torch.randn(sum(lengths), 8, 128)
    parts = [(q[a:b], k[a:b], v[a:b]) for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist())]
    ms = median_ms({"torch_attn": lambda: torch_attn.prefill(q, k, v, causal=True, qo_indptr=indptr, kv_indptr=indptr),
                    "sdpa": lambda: [sdpa(*p) for p in parts]}, args.repeats)
    print(f"ragged {lengths} causal float32: torch_attn {ms['torch_attn']:.1f}, sdpa (per sequence) "
          f"{ms['sdpa']:.1f}, ratio {ms['sdpa'] / ms['torch_attn']:.2f}")


if __name__ == "__main__":
    main()
