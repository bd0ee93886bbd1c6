"""What attention sinks cost: the same calls with and without `sinks`, taking turns call by
call in one process (bench_prefill's method), on the kernel TORCH_ATTN_BACKEND picks.

    python benchmarks/bench_sinks.py
"""
from __future__ import annotations

import torch

import torch_attn
from bench_prefill import interleaved_median_ms

CASES = [  # (name, batch, seqlen, heads, head_dim, causal): paper-grid points, 16k tokens
    ("d64 causal S=1024", 16, 1024, 32, 64, True),
    ("d128 full S=512", 32, 512, 16, 128, False),
    ("d128 causal S=4096", 4, 4096, 16, 128, True),
    ("d128 full S=16384", 1, 16384, 16, 128, False),
    ("d256 causal S=4096", 4, 4096, 8, 256, True),
]


def main() -> None:
    print(f"{torch.cuda.get_device_name()}: ms per call, median of 30, with / without sinks")
    print("| case | without | with | with / without |\n|---|---|---|---|")
    for name, batch, seqlen, heads, head_dim, causal in CASES:
        q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sinks = torch.randn(heads, device="cuda")
        calls = {"without": lambda: torch_attn.prefill(q, k, v, causal=causal),
                 "with": lambda: torch_attn.prefill(q, k, v, causal=causal, sinks=sinks)}
        interleaved_median_ms(calls, 5)  # warm-up
        ms = interleaved_median_ms(calls, 30)
        print(f"| {name} | {ms['without']:.3f} | {ms['with']:.3f} | {ms['with'] / ms['without']:.3f} |")


if __name__ == "__main__":
    main()
