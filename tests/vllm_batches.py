"""Scheduler steps for the vLLM backend's tests, without vLLM: the batch tensors as vLLM's model runner
lays them out, a paged cache holding each request's cached tokens, and the checks of one step's
output and cache against the float64 reference. tests/test_vllm_backend.py runs them through vLLM's
own classes; tests/test_vllm_replay.py replays what those produced (tests/data/vllm_replay.pt) on
CPU and GPU with no vLLM installed.

fp8 caches (--kv-cache-dtype fp8 / fp8_e5m2): the steps' keys and values as the codes a reference
quantization gives them (reference_codes, nearest finite code by table lookup), written as bytes into
the cache; the outputs are checked against the reference over what the cache holds after the step,
read back and dequantized (read_back)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from conftest import EPS, indptr_of
from torch_attn.reference import prefill_reference

BLOCK_SIZE = 16
NUM_BLOCKS = 48  # block 0 is vLLM's null block, never given to a request
MAX_BLOCKS_PER_REQUEST = 8
NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE = 8, 2, 64
PAD_SLOT_ID = -1  # vllm.v1.attention.backends.utils.PAD_SLOT_ID


@dataclass(frozen=True)
class Step:
    """One scheduler step: per request (tokens already in the cache, new tokens this step), then the
    padding a CUDA graph of a larger batch adds (tokens without a slot, requests without tokens)."""

    requests: tuple[tuple[int, int], ...]
    padded_tokens: int = 0
    padded_requests: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(new for _, new in self.requests) + self.padded_tokens

    @property
    def num_reqs(self) -> int:
        return len(self.requests) + self.padded_requests


# A prefill, a chunked prefill after 48 cached tokens, decode rows (one at a block edge), a prefill of
# exactly one block; the second step has the same shapes with other lengths (one CUDA graph for both).
MIXED = Step(requests=((0, 37), (48, 20), (70, 1), (15, 1), (0, 16)), padded_tokens=3, padded_requests=2)
MIXED_REPLAY = Step(requests=((5, 30), (0, 40), (95, 1), (31, 1), (16, 3)), padded_tokens=3, padded_requests=2)
STEPS = {"mixed": MIXED, "mixed_replay": MIXED_REPLAY}


def batch_tensors(step: Step, seed: int) -> dict[str, torch.Tensor]:
    """The step's tensors as vLLM's model runner hands them to CommonAttentionMetadata: int32
    query_start_loc [num_reqs + 1] (padded requests repeat the end), int32 seq_lens (0 when padded),
    int32 block_table [num_reqs, MAX_BLOCKS_PER_REQUEST] (unused entries 0), int64 slot_mapping
    [num_tokens] (PAD_SLOT_ID for padded tokens). Blocks are handed out shuffled."""
    free_blocks = (torch.randperm(NUM_BLOCKS - 1, generator=torch.Generator().manual_seed(seed)) + 1).tolist()
    query_lens = [new for _, new in step.requests] + [0] * step.padded_requests
    seq_lens = [cached + new for cached, new in step.requests] + [0] * step.padded_requests
    block_table = torch.zeros(step.num_reqs, MAX_BLOCKS_PER_REQUEST, dtype=torch.int32)
    slot_mapping = []
    for r, ((cached, new), seq_len) in enumerate(zip(step.requests, seq_lens)):
        blocks = [free_blocks.pop() for _ in range(math.ceil(seq_len / BLOCK_SIZE))]
        block_table[r, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        slot_mapping += [blocks[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE for pos in range(cached, seq_len)]
    slot_mapping += [PAD_SLOT_ID] * step.padded_tokens
    return dict(query_start_loc=indptr_of(query_lens, "cpu"),
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table=block_table,
                slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64))


@dataclass
class StepData:
    """Random inputs of a step: this step's q, k, v (padding rows included) and each request's cached keys."""

    query: torch.Tensor  # [num_tokens, NUM_HEADS, HEAD_SIZE]
    key: torch.Tensor  # [num_tokens, NUM_KV_HEADS, HEAD_SIZE]
    value: torch.Tensor
    cached_keys: list[torch.Tensor]  # per request [cached, NUM_KV_HEADS, HEAD_SIZE]
    cached_values: list[torch.Tensor]


def step_data(step: Step, dtype: torch.dtype, device, seed: int) -> StepData:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    n = step.num_tokens
    return StepData(rand(n, NUM_HEADS, HEAD_SIZE), rand(n, NUM_KV_HEADS, HEAD_SIZE), rand(n, NUM_KV_HEADS, HEAD_SIZE),
                    [rand(cached, NUM_KV_HEADS, HEAD_SIZE) for cached, _ in step.requests],
                    [rand(cached, NUM_KV_HEADS, HEAD_SIZE) for cached, _ in step.requests])


def write_slot(kv_cache: torch.Tensor, slot: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """One token into vLLM's logical [blocks, heads, block_size, 2 * HEAD_SIZE] cache, element by element."""
    block, offset = divmod(slot, BLOCK_SIZE)
    kv_cache[block, :, offset, :HEAD_SIZE] = key
    kv_cache[block, :, offset, HEAD_SIZE:] = value


def fill_cached_tokens(kv_cache: torch.Tensor, step: Step, batch: dict, data: StepData, poison=math.nan) -> None:
    """Poisons the whole cache with NaN (slots nothing may read; an fp8 cache's bytes: NAN_CODE), then
    writes each request's cached tokens."""
    kv_cache.fill_(poison)
    for r, (cached, _) in enumerate(step.requests):
        for pos in range(cached):
            slot = int(batch["block_table"][r, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE
            write_slot(kv_cache, slot, data.cached_keys[r][pos], data.cached_values[r][pos])


def expected_cache(kv_cache_before: torch.Tensor, batch: dict, data: StepData) -> torch.Tensor:
    """The cache after the step: each new token at its slot, padded tokens nowhere."""
    expected = kv_cache_before.clone()
    for t, slot in enumerate(batch["slot_mapping"].tolist()):
        if slot != PAD_SLOT_ID:
            write_slot(expected, slot, data.key[t], data.value[t])
    return expected


def assert_output_matches_reference(output: torch.Tensor, step: Step, data: StepData, *, sm_scale: float,
                                     window_left: int = -1, logits_soft_cap: float = 0.0, sinks=None) -> None:
    """Every real row of output [num_tokens, NUM_HEADS, HEAD_SIZE] against the float64 reference of its
    request over cached + new keys (causal, queries last), by FlashAttention's rule (conftest.EPS)."""
    query_lens = [new for _, new in step.requests]
    qo_indptr = indptr_of(query_lens, "cpu")
    kv_indptr = indptr_of([cached + new for cached, new in step.requests], "cpu")
    starts = qo_indptr.tolist()

    def with_cached(cached: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
        """Each request's cached rows, then its rows of this step, packed."""
        return torch.cat([torch.cat([cached[r], new[starts[r]:starts[r + 1]]]) for r in range(len(query_lens))])

    keys, values = with_cached(data.cached_keys, data.key), with_cached(data.cached_values, data.value)
    rows = starts[-1]
    kwargs = dict(causal=True, sm_scale=sm_scale, window_left=window_left, logits_soft_cap=logits_soft_cap,
                  sinks=None if sinks is None else sinks.cpu(), qo_indptr=qo_indptr, kv_indptr=kv_indptr)
    q, k, v = data.query[:rows].cpu(), keys.cpu(), values.cpu()
    want, _ = prefill_reference(q, k, v, **kwargs)
    got = output[:rows].cpu()
    assert torch.isfinite(got).all(), "non-finite output rows"
    err = (got.double() - want).abs().max().item()
    baseline, _ = prefill_reference(q, k, v, compute_dtype=q.dtype, **kwargs)
    allowed = EPS[q.dtype] + 2 * (baseline.double() - want).abs().max().item()
    assert err <= allowed, f"max |out - ref| = {err:.3e} > allowed {allowed:.3e}"


def assert_cache_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit, NaN where NaN (the poisoned slots nothing wrote)."""
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "the step wrote slots it does not own"
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), "a new token's key or value is not at its slot"


NAN_CODE = 0x7F  # a NaN in both float8_e4m3fn and float8_e5m2


def fp8_scales(data: StepData, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor k_scale, v_scale (float32 []) as a calibration would give them: amax / the format's max."""
    def scale(new: torch.Tensor, cached: list[torch.Tensor]) -> torch.Tensor:
        amax = max(t.abs().max().item() for t in [new, *cached] if t.numel())
        return torch.tensor(amax / torch.finfo(fp8_dtype).max, dtype=torch.float32)

    return scale(data.key, data.cached_keys), scale(data.value, data.cached_values)


def reference_codes(x: torch.Tensor, fp8_dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    """The bytes of vLLM's reshape_and_cache_flash for fp8: y = x / scale in float32 (scale per tensor,
    or [heads] over x [.., heads, D]), saturated to the format's largest finite value, rounded to the
    nearest finite code (ties to the even code), the sign kept (-0 included). By lookup in the table
    of every code, not through torch's fp8 conversion."""
    y = x.float().cpu() / scale.float().cpu().view(-1, 1)
    values = torch.arange(128, dtype=torch.uint8).view(fp8_dtype).double()  # codes 0.. in increasing value
    values = values[torch.isfinite(values)]
    magnitude = y.abs().double().clamp(max=values[-1].item()).reshape(-1)
    above = torch.searchsorted(values, magnitude).clamp(max=len(values) - 1)  # values[above] >= magnitude
    below = (above - 1).clamp(min=0)
    to_above, to_below = values[above] - magnitude, magnitude - values[below]
    # Adjacent magnitudes are adjacent codes, so of two equally near ones exactly one is even.
    pick = torch.where((to_above < to_below) | ((to_above == to_below) & (above % 2 == 0)), above, below)
    signs = torch.signbit(y).reshape(-1).to(torch.uint8) << 7
    return (pick.to(torch.uint8) | signs).view(y.shape)


def coded(data: StepData, fp8_dtype: torch.dtype, k_scale: torch.Tensor, v_scale: torch.Tensor) -> StepData:
    """data's keys and values (this step's and the cached ones) as their reference codes (uint8)."""
    def k(x):
        return reference_codes(x, fp8_dtype, k_scale)

    def v(x):
        return reference_codes(x, fp8_dtype, v_scale)

    return StepData(data.query, k(data.key), v(data.value), [k(c) for c in data.cached_keys],
                    [v(c) for c in data.cached_values])


def read_back(kv_cache: torch.Tensor, step: Step, batch: dict, query: torch.Tensor, k_scale: torch.Tensor,
              v_scale: torch.Tensor) -> StepData:
    """What the fp8 cache (vLLM's [blocks, heads, block_size, 2 * HEAD_SIZE] view, in its fp8 dtype)
    holds for each request, cached tokens and this step's, dequantized (code * scale) in float64: the
    keys and values the attention of the step reads."""
    cache = kv_cache.cpu().double()
    keys = torch.zeros(query.shape[0], NUM_KV_HEADS, HEAD_SIZE, dtype=torch.float64)
    values = torch.zeros_like(keys)
    cached_keys, cached_values = [], []
    start = 0
    for r, (cached, new) in enumerate(step.requests):
        slots = [int(batch["block_table"][r, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE
                 for pos in range(cached + new)]
        rows = torch.stack([cache[slot // BLOCK_SIZE, :, slot % BLOCK_SIZE] for slot in slots]) if slots else \
            torch.zeros(0, NUM_KV_HEADS, 2 * HEAD_SIZE, dtype=torch.float64)
        k = rows[..., :HEAD_SIZE] * k_scale.double().cpu().view(-1, 1)
        v = rows[..., HEAD_SIZE:] * v_scale.double().cpu().view(-1, 1)
        cached_keys.append(k[:cached])
        cached_values.append(v[:cached])
        keys[start:start + new], values[start:start + new] = k[cached:], v[cached:]
        start += new
    return StepData(query, keys, values, cached_keys, cached_values)
