"""MLA prefill (D_qk != D_v), head dim 512 (next to 256 at the same tokens) and chunked attention against
the peers that run them, in one run on one
card (bench_prefill's method: implementations taking turns call by call, median of --repeats). Peers run a
chunked case as its chunks, each a sequence of its own.

TFLOP/s = 2 * visible pairs * H * (D_qk + D_v) / time (S = Q K^T and O = P V; 4 * pairs * H * D when
the two dims are equal). FlashInfer (fa3, its head_dim_vo) runs where its wheel is carried.

    python benchmarks/bench_coverage.py [--flashinfer fa3] [--repeats 30]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_attn
from bench_prefill import interleaved_median_ms

DTYPE = torch.bfloat16


def visible_pairs(seqlen: int, causal: bool, chunk: int) -> int:
    i = torch.arange(seqlen).unsqueeze(1)
    j = torch.arange(seqlen).unsqueeze(0)
    seen = torch.ones(seqlen, seqlen, dtype=torch.bool)
    if causal:
        seen &= j <= i
    if chunk:
        seen &= (j // chunk) == (i // chunk)
    return int(seen.sum())


def peers(q, k, v, causal, chunk, flashinfer_backends):
    """name -> zero-argument callable; q, k, v: [B, S, H, D]."""
    if q.shape[-1] == v.shape[-1] == 192:
        flashinfer_backends = []  # FlashInfer 0.2.14's fa3 builds v head dims 64, 128 and 256 only
    fns = {"torch_attn": lambda q=q, k=k, v=v: torch_attn.prefill(q, k, v, causal=causal, chunk_size=chunk)}
    if chunk:
        # No SDPA backend or FlashInfer wrapper here takes a chunked mask; over fresh sequences it is the
        # plain mask over each chunk as a sequence of its own, which the peers then run (the same pairs).
        b, s = q.shape[:2]
        assert s % chunk == 0, "the peers' stand-in needs whole chunks"
        q, k, v = (t.reshape(b * s // chunk, chunk, *t.shape[2:]) for t in (q, k, v))
        fns["torch_attn (as chunks)"] = lambda: torch_attn.prefill(q, k, v, causal=causal)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]
    sdpa_backends = [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]
    if max(q.shape[-1], v.shape[-1]) > 256:  # the only SDPA backend that runs head dims past 256
        sdpa_backends.append(("sdpa-math", SDPBackend.MATH))
    for name, backend in sdpa_backends:
        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
        fns[name] = run
    if flashinfer_backends:
        import flashinfer
        b, s, hq, dqk = q.shape
        hkv, dv = k.shape[2], v.shape[-1]
        indptr = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device="cuda")
        for backend in flashinfer_backends:
            workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
            wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, kv_layout="NHD", backend=backend)
            try:  # (its JIT build refuses some head dims, e.g. a v head dim of 192)
                wrapper.plan(indptr, indptr, hq, hkv, dqk, head_dim_vo=dv, causal=causal, q_data_type=DTYPE)
            except RuntimeError as err:
                print(f"  flashinfer-{backend}: skipped ({str(err).splitlines()[0][:90]})")
                continue
            flat = [t.reshape(b * s, t.shape[2], t.shape[3]) for t in (q, k, v)]
            fns[f"flashinfer-{backend}"] = lambda wrapper=wrapper, flat=flat: wrapper.run(*flat)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flashinfer", default="")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", default="", help="run cases whose name contains one of these (comma list)")
    args = parser.parse_args()
    fi = [b for b in args.flashinfer.split(",") if b]
    # (name, batch, seqlen, q heads, kv heads, D_qk, D_v, causal, chunk): 16k tokens a case.
    cases = []
    for seqlen in (1024, 4096, 16384):
        for causal in (False, True):
            # DeepSeek-V3 / Kimi-K2 prefill per GPU at TP8: 16 heads of (192, 128), MHA.
            cases.append((f"mla 192/128 {'causal' if causal else 'full'} S={seqlen}", 16384 // seqlen, seqlen, 16, 16,
                          192, 128, causal, 0))
            cases.append((f"same dims 192/192 {'causal' if causal else 'full'} S={seqlen}", 16384 // seqlen, seqlen,
                          16, 16, 192, 192, causal, 0))
    for seqlen, batch in ((4096, 4), (1024, 16)):  # Gemma 4's global layers (16/8 heads, 512), and 256 beside
        for causal in (False, True):
            for dim in (512, 256):
                cases.append((f"d{dim} {'causal' if causal else 'full'} S={seqlen}", batch, seqlen, 16, 8, dim, dim,
                              causal, 0))
    for seqlen in (16384, 32768):  # Llama 4 Scout/Maverick chunked layers: 40/8 heads, d128, chunks of 8192
        cases.append((f"chunked 8192 causal S={seqlen}", 1, seqlen, 40, 8, 128, 128, True, 8192))
        cases.append((f"unchunked causal S={seqlen}", 1, seqlen, 40, 8, 128, 128, True, 0))
    for chunk in (1024, 2048):  # smaller chunks, many per sequence (the mask's own cost shows)
        cases.append((f"chunked {chunk} causal S=16384", 1, 16384, 40, 8, 128, 128, True, chunk))
    only = [o for o in args.only.split(",") if o]
    cases = [c for c in cases if not only or any(o in c[0] for o in only)]
    print(f"{torch.cuda.get_device_name()}, bf16, TFLOP/s (median of {args.repeats}, taking turns)")
    for name, batch, seqlen, hq, hkv, dqk, dv, causal, chunk in cases:
        q = torch.randn(batch, seqlen, hq, dqk, device="cuda", dtype=DTYPE)
        k = torch.randn(batch, seqlen, hkv, dqk, device="cuda", dtype=DTYPE)
        v = torch.randn(batch, seqlen, hkv, dv, device="cuda", dtype=DTYPE)
        flops = 2.0 * batch * visible_pairs(seqlen, causal, chunk) * hq * (dqk + dv)
        fns = {}
        for impl, fn in peers(q, k, v, causal, chunk, fi).items():
            try:
                fn()
                torch.cuda.synchronize()
                fns[impl] = fn
            except (RuntimeError, ValueError, TypeError) as err:
                print(f"  {impl}: skipped ({str(err).splitlines()[0][:90]})")
        interleaved_median_ms(fns, 5)  # warm-up
        ms = interleaved_median_ms(fns, args.repeats)
        print(f"{name}: " + ", ".join(f"{impl} {flops / (t * 1e-3) / 1e12:.1f}" for impl, t in ms.items()), flush=True)


if __name__ == "__main__":
    main()
