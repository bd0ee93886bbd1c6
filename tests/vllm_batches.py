"""Scheduler steps for the vLLM backend's tests, without vLLM: the batch tensors as vLLM's model runner
lays them out, a paged cache holding each request's cached tokens, and the checks of one step's
output and cache against the float64 reference. tests/test_vllm_backend.py runs them through vLLM's
own classes; tests/test_vllm_replay.py replays what those produced (tests/data/vllm_replay.pt) on
CPU and GPU with no vLLM installed."""
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


def fill_cached_tokens(kv_cache: torch.Tensor, step: Step, batch: dict, data: StepData) -> None:
    """Poisons the whole cache with NaN (slots nothing may read), then writes each request's cached tokens."""
    kv_cache.fill_(math.nan)
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
