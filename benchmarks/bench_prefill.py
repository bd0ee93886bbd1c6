"""Prefill throughput of torch_attn and its peers, side by side in one run on one card.

Protocol (FlashAttention-2/3 papers): bf16, 16k tokens in total (batch = 16384 / seqlen),
hidden 2048 (heads = 2048 / head_dim), random normal inputs, forward only, CUDA
events around each call, median of --repeats calls after warm-up, the implementations
of a case taking turns call by call,
TFLOP/s = 4 * B * H * Sq * Skv * D / time, counting only visible (query, key) pairs
under a causal mask. Serving-shaped cases follow ../shared/ANCHORS.md.

    python benchmarks/bench_prefill.py [--flashinfer] [--markdown FILE] [--json FILE]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_attn

DTYPE = torch.bfloat16


@dataclass
class Case:
    name: str
    head_dim: int
    causal: bool
    qo_lens: list[int]
    kv_lens: list[int]
    num_qo_heads: int
    num_kv_heads: int
    dense: bool  # equal lengths: peers without ragged support run too
    results: dict = field(default_factory=dict)  # impl -> TFLOP/s (or µs for latency cases)
    latency: bool = False
    page_size: int = 0  # > 0: K/V in a paged cache with shuffled pages
    kv_layout: str = "NHD"

    @property
    def flops(self) -> float:
        total = 0
        for q_len, kv_len in zip(self.qo_lens, self.kv_lens):
            if self.causal:  # visible pairs: query i sees keys j <= i + kv_len - q_len
                total += sum(min(kv_len, max(0, i + kv_len - q_len + 1)) for i in range(q_len))
            else:
                total += q_len * kv_len
        return 4.0 * total * self.num_qo_heads * self.head_dim


def paper_grid() -> list[Case]:
    cases = []
    seqlens = {64: [1024, 4096, 16384], 128: [512, 1024, 2048, 4096, 8192, 16384], 256: [1024, 4096, 16384]}
    for head_dim, lens in seqlens.items():
        for causal in (False, True):
            for s in lens:
                b, h = 16384 // s, 2048 // head_dim
                cases.append(Case(f"d{head_dim} {'causal' if causal else 'full'} S={s} B={b}", head_dim, causal,
                                  [s] * b, [s] * b, h, h, dense=True))
    return cases


def serving_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    ragged = torch.randint(100, 4001, (8,), generator=gen).tolist()
    prefixes = torch.randint(0, 12000, (8,), generator=gen).tolist()
    return [
        Case("GQA 32/8 B=4 S=4096 causal", 128, True, [4096] * 4, [4096] * 4, 32, 8, dense=True),
        Case("GQA 32/8 B=1 S=16384 causal", 128, True, [16384], [16384], 32, 8, dense=True),
        Case(f"ragged 8 seqs ({sum(ragged)} tok) causal", 128, True, ragged, ragged, 32, 8, dense=False),
        Case(f"chunked: same q on prefixes ({sum(r + p for r, p in zip(ragged, prefixes))} kv)", 128, True, ragged,
             [r + p for r, p in zip(ragged, prefixes)], 32, 8, dense=False),
        Case("one seq of 128 tokens, 32/8 heads (µs/call)", 128, True, [128], [128], 32, 8, dense=True, latency=True),
    ]


def paged_cases() -> list[Case]:
    """The ragged and chunked serving batches again, with K/V in a paged cache."""
    cases = []
    for base in serving_cases()[2:4]:
        for page_size, layout in ((16, "NHD"), (16, "HND"), (64, "NHD"), (64, "HND")):
            name = base.name.split(" (")[0] + f", paged {page_size} {layout}"
            cases.append(Case(name, base.head_dim, base.causal, base.qo_lens, base.kv_lens, base.num_qo_heads,
                              base.num_kv_heads, dense=False, page_size=page_size, kv_layout=layout))
    return cases


def select_backend(name: str) -> None:
    """Our rows force their kernel through TORCH_ATTN_BACKEND, read on every call."""
    os.environ["TORCH_ATTN_BACKEND"] = name[len(OURS):] if name.startswith(OURS) else "auto"


def call_ms(fn) -> float:
    """One call, timed with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def interleaved_median_ms(fns: dict, repeats: int) -> dict:
    """name -> median ms of `repeats` calls, the implementations taking turns call by
    call. Timed one after another in blocks, they met the card in different states:
    within one process the same kernel's block medians moved up to 10% at boost clocks
    (H100, 2026-11-26), which decided ratios between peers that ncu at fixed clocks
    found equal; taking turns, every implementation sees the same drift."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            select_backend(name)  # (outside the timed call)
            times[name].append(call_ms(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def indptr_of(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")


def make_inputs(case: Case):
    q = torch.randn(sum(case.qo_lens), case.num_qo_heads, case.head_dim, dtype=DTYPE, device="cuda")
    k = torch.randn(sum(case.kv_lens), case.num_kv_heads, case.head_dim, dtype=DTYPE, device="cuda")
    v = torch.randn_like(k)
    return q, k, v, indptr_of(case.qo_lens), indptr_of(case.kv_lens)


def make_paged_cache(case: Case):
    """Random caches with every sequence's pages shuffled over the cache; returns the
    caches and both page descriptions (ours: block_table/kv_lens; FlashInfer's)."""
    ps = case.page_size
    pages_per_seq = [(n + ps - 1) // ps for n in case.kv_lens]
    num_pages = sum(pages_per_seq)
    shape = (num_pages, ps, case.num_kv_heads, case.head_dim) if case.kv_layout == "NHD" else \
        (num_pages, case.num_kv_heads, ps, case.head_dim)
    k_cache = torch.randn(shape, dtype=DTYPE, device="cuda")
    v_cache = torch.randn_like(k_cache)
    kv_indices = torch.randperm(num_pages, device="cuda").to(torch.int32)
    kv_page_indptr = indptr_of(pages_per_seq)
    last_page_len = torch.tensor([n - (p - 1) * ps for n, p in zip(case.kv_lens, pages_per_seq)], dtype=torch.int32,
                                 device="cuda")
    block_table, kv_lens = torch_attn.block_table_from_flashinfer(kv_page_indptr, kv_indices, last_page_len, ps,
                                                                  max_pages=max(pages_per_seq))
    return k_cache, v_cache, block_table, kv_lens, (kv_page_indptr, kv_indices, last_page_len)


def our_backends() -> list[str]:
    """Our CUDA kernels that run on this GPU: the mma.sync one everywhere, the wgmma
    one on compute capability 9.0 in builds with sm_90a code."""
    archs = torch_attn.LIBRARY.config.arch_list if torch_attn.LIBRARY.config else ()
    return ["sm80"] + (["sm90"] if torch.cuda.get_device_capability() == (9, 0) and "9.0a" in archs else [])


OURS = "torch_attn-"  # our rows are named torch_attn-<backend>; select_backend sets TORCH_ATTN_BACKEND for them


def with_our_backends(impls: dict, run) -> None:
    for backend in our_backends():
        impls[OURS + backend] = run


def implementations(case: Case, q, k, v, qo_indptr, kv_indptr, flashinfer_backends):
    """name -> zero-argument callable running one prefill."""
    import_flashinfer = lambda: __import__("flashinfer")  # noqa: E731  (only when asked for)
    impls = {}
    if case.page_size:
        k_cache, v_cache, block_table, kv_lens, fi_pages = make_paged_cache(case)
        with_our_backends(impls, lambda: torch_attn.prefill_paged(q, k_cache, v_cache, qo_indptr, block_table, kv_lens,
                                                               kv_layout=case.kv_layout, causal=case.causal))
        for backend in flashinfer_backends:
            workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
            wrapper = import_flashinfer().BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout=case.kv_layout,
                                                                              backend=backend)
            wrapper.plan(qo_indptr, *fi_pages, case.num_qo_heads, case.num_kv_heads, case.head_dim, case.page_size,
                         causal=case.causal, q_data_type=DTYPE)
            impls[f"flashinfer-{backend}"] = lambda wrapper=wrapper: wrapper.run(q, (k_cache, v_cache))
        return impls
    if case.dense:
        b, s, skv = len(case.qo_lens), case.qo_lens[0], case.kv_lens[0]
        q4 = q.view(b, s, case.num_qo_heads, case.head_dim)
        k4 = k.view(b, skv, case.num_kv_heads, case.head_dim)
        v4 = v.view(b, skv, case.num_kv_heads, case.head_dim)
        with_our_backends(impls, lambda: torch_attn.prefill(q4, k4, v4, causal=case.causal))
        qt, kt, vt = q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2)  # SDPA's [B, H, S, D]
        gqa = case.num_qo_heads != case.num_kv_heads
        for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
            def run(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=case.causal, enable_gqa=gqa)
            impls[name] = run
    else:
        with_our_backends(impls, lambda: torch_attn.prefill(q, k, v, causal=case.causal, qo_indptr=qo_indptr,
                                                            kv_indptr=kv_indptr))
    for backend in flashinfer_backends:
        workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        wrapper = import_flashinfer().BatchPrefillWithRaggedKVCacheWrapper(workspace, kv_layout="NHD",
                                                                           backend=backend)
        wrapper.plan(qo_indptr, kv_indptr, case.num_qo_heads, case.num_kv_heads, case.head_dim, causal=case.causal,
                     q_data_type=DTYPE)
        impls[f"flashinfer-{backend}"] = lambda wrapper=wrapper: wrapper.run(q, k, v)
    return impls


def run_case(case: Case, args, flashinfer_backends) -> None:
    q, k, v, qo_indptr, kv_indptr = make_inputs(case)
    fns = {}
    for name, fn in implementations(case, q, k, v, qo_indptr, kv_indptr, flashinfer_backends).items():
        if args.impls and name not in args.impls:
            continue
        select_backend(name)
        try:
            for _ in range(args.warmup):
                fn()
            torch.cuda.synchronize()
        except RuntimeError as err:  # a peer that does not support the case
            print(f"  {name}: skipped ({str(err).splitlines()[0][:80]})")
            continue
        fns[name] = fn
    for name, ms in interleaved_median_ms(fns, args.repeats).items():
        case.results[name] = ms * 1e3 if case.latency else case.flops / (ms * 1e-3) / 1e12
    print(f"{case.name}: " + ", ".join(f"{n} {v:.1f}" for n, v in case.results.items()), flush=True)


# Ratio columns: (ours, peers); a ratio > 1 means ours is faster. Against several
# peers the fastest of them counts.
RATIOS = [("torch_attn-sm80", ["flashinfer-fa2"]),
          ("torch_attn-sm90", ["flashinfer-fa3", "sdpa-cudnn"])]


def table(cases: list[Case], impls: list[str]) -> str:
    ratios = [(ours, peers) for ours, peers in RATIOS if ours in impls and any(p in impls for p in peers)]
    header = ["case"] + impls + [f"{ours[len(OURS):]} / best of {', '.join(p for p in peers if p in impls)}"
                                 for ours, peers in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        cells = [case.name] + [f"{case.results[i]:.1f}" if i in case.results else "—" for i in impls]
        for ours, peers in ratios:
            mine = case.results.get(ours)
            found = [case.results[p] for p in peers if p in case.results]
            if mine and found:
                best = min(found) if case.latency else max(found)
                cells.append(f"{(best / mine) if case.latency else (mine / best):.2f}")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(cases: list[Case], impls: list[str], subtitle: str, path: str) -> None:
    """TFLOP/s against sequence length, one panel per (head dim, mask) of the paper grid,
    one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [c for c in cases if c.dense and c.num_qo_heads == c.num_kv_heads and not c.latency]
    head_dims = sorted({c.head_dim for c in grid})
    if not head_dims:
        return
    fig, axes = plt.subplots(2, len(head_dims), figsize=(4.2 * len(head_dims), 7), squeeze=False)
    for (row, causal), (col, head_dim) in itertools.product(enumerate((False, True)), enumerate(head_dims)):
        ax = axes[row][col]
        points = [c for c in grid if c.head_dim == head_dim and c.causal == causal]
        for impl in impls:
            xs = [c.qo_lens[0] for c in points if impl in c.results]
            ys = [c.results[impl] for c in points if impl in c.results]
            if xs:
                ax.plot(xs, ys, marker="o", linewidth=2.5 if impl.startswith(OURS) else 1.2, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_title(f"d={head_dim}, {'causal' if causal else 'non-causal'}")
        ax.set_xlabel("sequence length (16k tokens per batch)")
        ax.set_ylabel("TFLOP/s")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"bf16 attention prefill, {subtitle}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flashinfer", default="", help="comma list of FlashInfer backends to time (fa2,fa3)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", default="", help="run cases whose name contains one of these (comma list)")
    parser.add_argument("--impls", default="", help="time only these implementations (comma list; default: all)")
    parser.add_argument("--markdown", default=None, help="write the table (with card and date) here")
    parser.add_argument("--json", default=None, help="write raw numbers here")
    parser.add_argument("--plot", default=None, help="draw TFLOP/s against sequence length into this PNG")
    args = parser.parse_args()
    flashinfer_backends = [b for b in args.flashinfer.split(",") if b]
    known = [OURS + b for b in our_backends()] + ["sdpa-flash", "sdpa-cudnn"] + \
        [f"flashinfer-{b}" for b in flashinfer_backends]
    args.impls = {name.strip() for name in args.impls.split(",") if name.strip()}
    if args.impls - set(known):
        parser.error(f"--impls: unknown {sorted(args.impls - set(known))}; known: {', '.join(known)}")
    wanted = args.only.split(",")
    cases = [c for c in paper_grid() + serving_cases() + paged_cases() if any(w in c.name for w in wanted)]
    for case in cases:
        run_case(case, args, flashinfer_backends)
    impls = [name for name in known if not args.impls or name in args.impls]
    card = torch.cuda.get_device_name()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = (f"{card}, torch {torch.__version__}, {stamp}; TFLOP/s (µs per call for the latency row), "
             f"median of {args.repeats}")
    text = table(cases, impls)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{title}\n\n{text}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "date": stamp, "cases": [{"name": c.name, **c.results} for c in cases]}, f,
                      indent=1)
    if args.plot:
        plot(cases, impls, f"{card}, {stamp}", args.plot)
    print(f"\n{title}\n{text}")


if __name__ == "__main__":
    main()
