"""The kernels' pure index math, compiled for the host from the same headers and checked against
exact integer math (CI: no GPU needed, only nvcc). VisibleKeys (kernels/common/mask.cuh): every row's
visible keys under causal masks, windows and chunks, over work items as the kernels form them (tiles
running past the sequence or starting before row 0, whose rows outside it are never stored) and
positions up to 2^31 - 1, where the chunk bound's float quotient is most at risk. And the fp8 codes' conversion
(kernels/common/fp8_convert.cuh) on every code."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_attn import _build_spec

ROOT = Path(__file__).resolve().parent.parent
CUDA_HOME = _build_spec.find_cuda_home()
INT32_MAX = 2**31 - 1
ROWS = 192  # the widest work item (the wgmma kernel's d64 tile)


def host_program(tmp_path_factory, name):
    """tests/host/NAME.cu built for the host with nvcc."""
    if CUDA_HOME is None:
        pytest.skip("nvcc not found")
    exe = tmp_path_factory.mktemp("host") / name
    subprocess.run([str(Path(CUDA_HOME) / "bin" / "nvcc"), "-std=c++17", "-O2", "-I", str(ROOT / "csrc"),
                    str(ROOT / "tests" / "host" / f"{name}.cu"), "-o", str(exe)], check=True, capture_output=True)
    return exe


@pytest.fixture(scope="module")
def visible_keys_exe(tmp_path_factory):
    return host_program(tmp_path_factory, "visible_keys")


@pytest.fixture(scope="module")
def kv_tile_range_exe(tmp_path_factory):
    return host_program(tmp_path_factory, "kv_tile_range")


def expected(kv_len, qo_len, causal, window_left, chunk_size, rows):
    """mask.cuh's definition in exact (int64) integers for the rows (an array): (begin, end) arrays,
    clamped as the kernel clamps them."""
    last = rows.astype(np.int64) + (kv_len - qo_len)
    end = last + 1 if causal else np.full_like(last, kv_len)
    begin = last - window_left if window_left >= 0 else np.zeros_like(last)
    if chunk_size > 0:
        chunk_begin = np.maximum(last, 0) // chunk_size * chunk_size
        begin = np.maximum(begin, chunk_begin)
        end = np.minimum(end, np.where(last >= 0, chunk_begin + chunk_size, 0))
    return np.maximum(begin, 0), np.minimum(end, kv_len)


def items():
    """(kv_len, qo_len, causal, window_left, chunk_size, q_row0): small and extreme."""
    rng = random.Random(0)
    # 41, 61, 109 and 88995584: sizes whose float quotient at a chunk's first key falls just short of it
    # (one integer step corrects it), found by search; then random ones.
    chunks = [1, 2, 3, 7, 41, 61, 64, 100, 109, 128, 1000, 8192, 2**20 + 1, 88995584, 2**30, 2**31 - 2, INT32_MAX]
    chunks += [rng.randrange(2, 5000) for _ in range(4)] + [rng.randrange(2**20, INT32_MAX) for _ in range(4)]
    lengths = [(1, 1), (65, 65), (200, 50), (50, 200), (1000, 4097), (INT32_MAX, 1000), (INT32_MAX, INT32_MAX),
               (2**31 - 100, 2**30), (3 * 2**29, 2**31 - 5)]
    out = []
    for kv_len, qo_len in lengths:
        for chunk in chunks:
            starts = {0, qo_len - ROWS, qo_len - 1, -ROWS + 1, qo_len // 2, rng.randrange(-ROWS, qo_len)}
            if chunk < kv_len:  # items whose first row sits just before, on and after a chunk boundary
                boundary = (kv_len - 1) // chunk * chunk - (kv_len - qo_len)
                starts |= {boundary - 1, boundary, boundary + 1, boundary - ROWS + 1}
            for q_row0 in sorted(starts):
                causal = rng.random() < 0.6
                window = rng.choice([-1, -1, 0, 5, 90, 2**30])
                out.append((kv_len, qo_len, causal, window, chunk, q_row0))
    return out


def test_visible_keys_match_exact_math(visible_keys_exe):
    cases = items()
    text = "".join(f"{kv} {qo} {int(c)} {w} {ch} {r0} {ROWS}\n" for kv, qo, c, w, ch, r0 in cases)
    done = subprocess.run([str(visible_keys_exe)], input=text, capture_output=True, text=True, check=True)
    got = np.array(done.stdout.split(), dtype=np.int64).reshape(len(cases), ROWS, 2)
    bad = []
    for n, (kv, qo, causal, window, chunk, q_row0) in enumerate(cases):
        rows = np.arange(q_row0, q_row0 + ROWS)
        inside = (rows >= 0) & (rows < qo)  # rows outside the sequence: computed by the item's warps, never stored
        want_begin, want_end = expected(kv, qo, causal, window, chunk, rows)
        have_begin, have_end = got[n, :, 0], got[n, :, 1]
        same = (((have_begin == want_begin) & (have_end == want_end))
                | ((want_end <= want_begin) & (have_end <= have_begin)))
        for r in np.nonzero(inside & ~same)[0][:3]:
            bad.append(((kv, qo, causal, window, chunk, int(rows[r])), (int(want_begin[r]), int(want_end[r])),
                        (int(have_begin[r]), int(have_end[r]))))
    assert not bad, f"{len(bad)} rows differ, e.g. {bad[:5]}"


def test_kv_tile_ranges_hold_every_rows_keys(kv_tile_range_exe):
    """KvTileRange::of over a work item's rows inside its sequence (as both kernels call it), tiles of 64
    and 128 keys: every row's keys lie in the range; the unmasked run's tiles are whole for every row;
    past the run every row's first key is at or before the tile (only the end is tested there)."""
    jobs = []
    for kv, qo, causal, window, chunk, q_row0 in items():
        for block_m, block_n in ((128, 128), (192, 64)):
            first, last = max(q_row0, 0), min(q_row0 + block_m, qo)
            if last > first:
                jobs.append((kv, qo, causal, window, chunk, first, last - first, block_n))
    text = "".join(" ".join(str(int(x)) for x in job) + "\n" for job in jobs)
    done = subprocess.run([str(kv_tile_range_exe)], input=text, capture_output=True, text=True, check=True)
    bad = []
    for job, line in zip(jobs, done.stdout.splitlines(), strict=True):
        kv, qo, causal, window, chunk, first, rows, bn = job
        begin, count, full_begin, full_end = map(int, line.split())
        b, e = expected(kv, qo, causal, window, chunk, np.arange(first, first + rows))
        seen = e > b
        ok = count >= 0 and 0 <= full_begin <= full_end <= count
        ok = ok and bool(np.all((begin * bn <= b[seen]) & (e[seen] <= (begin + count) * bn)))
        for j in {full_begin, full_end - 1} if full_end > full_begin else ():  # the run's ends: intervals grow
            ok = ok and bool(np.all((b <= (begin + j) * bn) & ((begin + j + 1) * bn <= e)))
        if full_end < count:
            start = (begin + full_end) * bn
            ok = ok and bool(np.all(b[e > start] <= start))
        if not ok:
            bad.append((job, (begin, count, full_begin, full_end)))
    assert not bad, f"{len(bad)} of {len(jobs)} items wrong, e.g. {bad[:3]}"


def test_fp8_codes_convert_exactly(tmp_path_factory):
    """fp8_to_float (the kernels' conversion without a convert instruction) against torch, on all
    256 codes of both formats: equal values, NaN exactly where torch has NaN, inf where it has inf."""
    exe = host_program(tmp_path_factory, "fp8_convert")
    done = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    ours = torch.tensor([int(x) for x in done.stdout.split()], dtype=torch.int64).to(torch.int32).view(torch.float32)
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    theirs = torch.cat([codes.view(dtype).float() for dtype in (torch.float8_e4m3fn, torch.float8_e5m2)])
    assert torch.equal(ours.isnan(), theirs.isnan())
    finite = ~theirs.isnan()
    assert torch.equal(ours[finite], theirs[finite])  # (signed zeros and infs included)
    assert torch.equal(torch.signbit(ours[finite]), torch.signbit(theirs[finite]))
