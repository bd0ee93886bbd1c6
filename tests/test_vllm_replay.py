"""The vLLM backend's forward path without vLLM: batches captured from vLLM's builder and layers
(tests/data/vllm_replay.pt, made by tests/data/make_vllm_replay.py) replayed through the backend's
vLLM-free modules (kv_cache, paged_attention), on CPU (CI) and on CUDA (marked gpu, both kernels):
the cache write and the attention of a mixed step, in each of vLLM's cache layouts, against the float64
reference, with a bf16 cache and with fp8 caches (e4m3 and e5m2 codes, per-tensor scales != 1, in vLLM's
uint8 allocation: the write's bytes against the reference quantization, the output against the reference
over the dequantized cache); on CUDA also captured once in a CUDA graph and replayed on another batch of
the same shapes. GPU: python3 -m pytest -q tests/test_vllm_replay.py"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import HAS_GPU
from torch_attn.integrations.vllm.kv_cache import kv_cache_views, write_kv_cache
from torch_attn.integrations.vllm.paged_attention import LayerOptions, TorchAttnMetadata, attend
from vllm_batches import (HEAD_SIZE, NAN_CODE, NUM_KV_HEADS, PAD_SLOT_ID, STEPS, assert_cache_equal,
                          assert_output_matches_reference, coded, expected_cache, fill_cached_tokens, fp8_scales,
                          read_back, reference_codes, step_data)

REPLAY_FILE = Path(__file__).parent / "data" / "vllm_replay.pt"
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
# fp8 caches by vLLM's --kv-cache-dtype name (what its cache write is told) and the codes' dtype.
FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass
class Fp8Cache:
    """An fp8 cache's format and the layer's per-tensor descale factors (on the step's device)."""

    name: str
    dtype: torch.dtype
    k_scale: torch.Tensor
    v_scale: torch.Tensor


def fp8_cache(name: str, data, device) -> Fp8Cache:
    k_scale, v_scale = fp8_scales(data, FP8[name])
    return Fp8Cache(name, FP8[name], k_scale.to(device), v_scale.to(device))


def wgmma_refuses(device: str, cuda_backend: str, fp8: Fp8Cache | None) -> bool:
    """Forced sm90 with an fp8 cache: the op must refuse (the test then checks that and stops)."""
    return fp8 is not None and device == "cuda" and cuda_backend == "sm90"


def load_replay() -> dict:
    """{step name: {seed, metadata (the builder's tensors and causal), slot_mapping}, "layouts": {name:
    (shape, stride) of vLLM's layer-0 cache view}, "options": {mask name: the impl's LayerOptions fields}}."""
    return torch.load(REPLAY_FILE, weights_only=True)


def replayed(replay: dict, step_name: str, device) -> tuple[TorchAttnMetadata, torch.Tensor]:
    saved = replay[step_name]
    metadata = TorchAttnMetadata(**{name: value.to(device) if isinstance(value, torch.Tensor) else value
                                    for name, value in saved["metadata"].items()})
    return metadata, saved["slot_mapping"].to(device)


def cache_in_layout(layout: dict, dtype: torch.dtype, device) -> torch.Tensor:
    """vLLM's [blocks, heads, block_size, 2 * D] cache view with the strides vLLM gave it in that layout."""
    return torch.empty_strided(layout["shape"], layout["stride"], dtype=dtype, device=device)


def options_of(replay: dict, mask: str, device) -> LayerOptions:
    saved = dict(replay["options"][mask])
    if saved["sinks"] is not None:
        saved["sinks"] = saved["sinks"].to(device)
    return LayerOptions(**saved)


def forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8: Fp8Cache | None = None) -> None:
    """What vLLM's Attention layer runs per step on our backend: impl.do_kv_cache_update, then impl.forward
    (an fp8 cache: read through views in its fp8 dtype, written and read with the layer's scales)."""
    if fp8 is None:
        k_cache, v_cache = kv_cache_views(kv_cache, data.query.shape[-1])
        write_kv_cache(data.key, data.value, k_cache, v_cache, slot_mapping)
        attend(data.query, k_cache, v_cache, metadata, options, output)
        return
    k_cache, v_cache = kv_cache_views(kv_cache, data.query.shape[-1], fp8.dtype)
    write_kv_cache(data.key, data.value, k_cache, v_cache, slot_mapping, fp8.k_scale, fp8.v_scale, fp8.name)
    attend(data.query, k_cache, v_cache, metadata, options, output, fp8.k_scale, fp8.v_scale)


def fill_step(kv_cache, step_name, replay, data, fp8: Fp8Cache | None) -> None:
    """The cache before the step: poisoned, each request's cached tokens in it (fp8: their reference codes)."""
    if fp8 is None:
        fill_cached_tokens(kv_cache, STEPS[step_name], replay[step_name]["metadata"], data)
    else:
        fill_cached_tokens(kv_cache, STEPS[step_name], replay[step_name]["metadata"],
                           coded(data, fp8.dtype, fp8.k_scale, fp8.v_scale), poison=NAN_CODE)


def check_step(step_name, data, kv_cache_before, kv_cache, output, replay, options,
               fp8: Fp8Cache | None = None) -> None:
    """The cache holds exactly the step's tokens at their slots (fp8: their reference codes, bit for bit)
    and nothing else changed; every real output row matches the float64 reference over the keys and
    values the step attends to (fp8: the cache's contents, read back and dequantized)."""
    step, saved = STEPS[step_name], replay[step_name]
    batch = dict(block_table=saved["metadata"]["block_table"], slot_mapping=saved["slot_mapping"])
    if fp8 is None:
        assert_cache_equal(kv_cache.cpu(), expected_cache(kv_cache_before.cpu(), batch, data))
        held = data
    else:
        want = expected_cache(kv_cache_before.cpu(), batch, coded(data, fp8.dtype, fp8.k_scale, fp8.v_scale))
        assert torch.equal(kv_cache.cpu(), want), "the cache write's codes differ from the reference quantization"
        held = read_back(kv_cache.view(fp8.dtype), step, batch, data.query, fp8.k_scale, fp8.v_scale)
    assert_output_matches_reference(output, step, held, sm_scale=options.sm_scale, window_left=options.window_left,
                                    logits_soft_cap=options.logits_soft_cap, sinks=options.sinks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cache", ["bf16", *FP8])
@pytest.mark.parametrize("layout", ["LBNHC", "LBHNC", "BLHNC"])
@pytest.mark.parametrize("mask", ["causal", "window-softcap", "sinks"])
def test_replayed_step_matches_reference(device, cache, layout, mask, cuda_backend):
    """fp8 caches are uint8 buffers with the strides vLLM gives a bf16 cache of the layout, counted in
    elements: vLLM's uint8 view has those too (tests/test_vllm_backend.py checks it)."""
    replay = load_replay()
    step_name, dtype = "mixed", torch.bfloat16
    metadata, slot_mapping = replayed(replay, step_name, device)
    options = options_of(replay, mask, device)
    data = step_data(STEPS[step_name], dtype, device, seed=2)
    fp8 = None if cache == "bf16" else fp8_cache(cache, data, device)
    kv_cache = cache_in_layout(replay["layouts"][layout], dtype if fp8 is None else torch.uint8, device)
    fill_step(kv_cache, step_name, replay, data, fp8)
    before = kv_cache.clone()
    output = torch.full_like(data.query, float("nan"))
    if wgmma_refuses(device, cuda_backend, fp8):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8)
        return
    forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8)
    check_step(step_name, data, before, kv_cache, output, replay, options, fp8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fp8_dtype", FP8.values(), ids=FP8)
@pytest.mark.parametrize("per_head", [False, True], ids=["per-tensor", "per-head"])
def test_fp8_cache_write_matches_reference_quantization(device, fp8_dtype, per_head):
    """The torch write (where vLLM's kernel is not loaded) on values a calibration does not cover: past
    the format's range (saturated, never inf or NaN), below its smallest subnormal (to +-0), exactly
    between two codes (to the even one), negative zero; per-tensor and per-KV-head scales (the op takes
    both; the backend declares per-tensor only). Every byte against reference_codes; padded tokens write
    nothing."""
    gen = torch.Generator().manual_seed(7)
    num_tokens, block_size, num_blocks = 40, 16, 6
    finite_max = torch.finfo(fp8_dtype).max
    key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_SIZE, generator=gen).to(torch.bfloat16) * 4
    # K: scales whose 4-sigma keys pass the e4m3 max; V: powers of two, so that x / scale is exactly the
    # value aimed at (each tie of two adjacent codes, +-0, underflow, 4x the format's max, both signs).
    k_scale = torch.rand((NUM_KV_HEADS,) if per_head else (), generator=gen) * 0.02 + 0.005
    v_scale = torch.tensor([2.0 ** -3, 2.0 ** 2] if per_head else 2.0 ** -3)
    codes = torch.arange(128, dtype=torch.uint8).view(fp8_dtype).float()
    codes = codes[torch.isfinite(codes)]
    ties = (codes[1:] + codes[:-1]) / 2
    special = torch.cat([ties, -ties, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 4 * finite_max, -4 * finite_max])])
    aimed = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_SIZE, generator=gen) * 2
    aimed.view(-1)[:special.numel()] = special
    value = (aimed * v_scale.view(-1, 1)).to(torch.bfloat16)
    assert torch.equal(value.float() / v_scale.view(-1, 1), aimed.to(torch.bfloat16).float())
    slots = torch.randperm((num_blocks - 1) * block_size, generator=gen)[:num_tokens] + block_size
    slots[::7] = PAD_SLOT_ID
    cache = torch.full((num_blocks, NUM_KV_HEADS, block_size, 2 * HEAD_SIZE), NAN_CODE, dtype=torch.uint8)
    want = cache.clone()
    key_codes, value_codes = reference_codes(key, fp8_dtype, k_scale), reference_codes(value, fp8_dtype, v_scale)
    for t, slot in enumerate(slots.tolist()):
        if slot != PAD_SLOT_ID:
            want[slot // block_size, :, slot % block_size] = torch.cat([key_codes[t], value_codes[t]], dim=-1)
    cache = cache.to(device)
    k_cache, v_cache = kv_cache_views(cache, HEAD_SIZE, fp8_dtype)
    write_kv_cache(key.to(device), value.to(device), k_cache, v_cache, slots.to(device), k_scale.to(device),
                   v_scale.to(device), "fp8_e4m3" if fp8_dtype == torch.float8_e4m3fn else "fp8_e5m2")
    assert torch.equal(cache.cpu(), want), f"{(cache.cpu() != want).sum().item()} bytes differ from the reference"
    written = want != NAN_CODE
    assert torch.isfinite(cache.cpu().view(fp8_dtype).float()[written]).all(), "a written code is not finite"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
@pytest.mark.parametrize("cache", ["bf16", "fp8_e4m3"])
@pytest.mark.parametrize("mask", ["causal", "sinks"])
def test_one_cuda_graph_replays_other_batches(cache, mask, cuda_backend):
    """vLLM's FULL CUDA graphs: captured on one step, replayed with another step's lengths, pages and
    tokens written into the same buffers (the builder's metadata is those buffers). fp8: the layer's
    scales are fixed buffers, set from the first step (later steps' outliers saturate, as in vLLM)."""
    replay = load_replay()
    dtype, device = torch.bfloat16, "cuda"
    options = options_of(replay, mask, device)
    metadata, slot_mapping = replayed(replay, "mixed", device)
    data = step_data(STEPS["mixed"], dtype, device, seed=2)
    fp8 = None if cache == "bf16" else fp8_cache(cache, data, device)
    kv_cache = cache_in_layout(replay["layouts"]["LBNHC"], dtype if fp8 is None else torch.uint8, device)
    output = torch.empty_like(data.query)

    def load_step(step_name: str, seed: int):
        new_metadata, new_slots = replayed(replay, step_name, device)
        for name in ("query_start_loc", "seq_lens", "block_table"):
            getattr(metadata, name).copy_(getattr(new_metadata, name))
        slot_mapping.copy_(new_slots)
        new_data = step_data(STEPS[step_name], dtype, device, seed=seed)
        for name in ("query", "key", "value"):
            getattr(data, name).copy_(getattr(new_data, name))
        data.cached_keys, data.cached_values = new_data.cached_keys, new_data.cached_values
        fill_step(kv_cache, step_name, replay, data, fp8)
        output.fill_(float("nan"))
        return kv_cache.clone()

    load_step("mixed", seed=2)
    if wgmma_refuses(device, cuda_backend, fp8):
        with pytest.raises(ValueError, match="the wgmma kernel takes no fp8 inputs yet"):
            forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8)
        return
    forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8)  # warm: scratch and lazy inits
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward_step(data, kv_cache, metadata, slot_mapping, options, output, fp8)
    for step_name, seed in (("mixed_replay", 5), ("mixed", 6)):
        before = load_step(step_name, seed)
        graph.replay()
        torch.cuda.synchronize()
        check_step(step_name, data, before, kv_cache, output, replay, options, fp8)
