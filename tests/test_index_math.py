"""The kernels' pure index math, compiled for the host from the same headers and checked against
exact integer math (CI: no GPU needed, only nvcc). VisibleKeys (kernels/common/mask.cuh): every row's
visible keys under causal masks, windows and chunks, over work items as the kernels form them (tiles
running past the sequence or starting before row 0, whose rows outside it are never stored) and
positions up to 2^31 - 1, where the chunk bound's float quotient is most at risk."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from torch_attn import _build_spec

ROOT = Path(__file__).resolve().parent.parent
CUDA_HOME = _build_spec.find_cuda_home()
INT32_MAX = 2**31 - 1
ROWS = 192  # the widest work item (the wgmma kernel's d64 tile)


@pytest.fixture(scope="module")
def visible_keys_exe(tmp_path_factory):
    if CUDA_HOME is None:
        pytest.skip("nvcc not found")
    exe = tmp_path_factory.mktemp("host") / "visible_keys"
    subprocess.run([str(Path(CUDA_HOME) / "bin" / "nvcc"), "-std=c++17", "-O2", "-I", str(ROOT / "csrc"),
                    str(ROOT / "tests" / "host" / "visible_keys.cu"), "-o", str(exe)], check=True, capture_output=True)
    return exe


def expected(kv_len, qo_len, causal, window_left, chunk_size, row):
    """mask.cuh's definition in exact integers: the interval, clamped as the kernel clamps it."""
    last = row + kv_len - qo_len
    end = last + 1 if causal else kv_len
    begin = last - window_left if window_left >= 0 else 0
    if chunk_size > 0:
        chunk_begin = max(last, 0) // chunk_size * chunk_size
        begin = max(begin, chunk_begin)
        end = min(end, chunk_begin + chunk_size if last >= 0 else 0)
    return max(begin, 0), min(end, kv_len)


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
    got = [tuple(map(int, line.split())) for line in done.stdout.splitlines()]
    assert len(got) == len(cases) * ROWS
    bad = []
    for n, (kv, qo, causal, window, chunk, q_row0) in enumerate(cases):
        for r in range(ROWS):
            if not 0 <= q_row0 + r < qo:
                continue  # a row outside the sequence: computed by the item's warps, never stored
            want = expected(kv, qo, causal, window, chunk, q_row0 + r)
            have = got[n * ROWS + r]
            same = have == want or (want[1] <= want[0] and have[1] <= have[0])  # both empty
            if not same:
                bad.append(((kv, qo, causal, window, chunk, q_row0 + r), want, have))
    assert not bad, f"{len(bad)} rows differ, e.g. {bad[:5]}"
