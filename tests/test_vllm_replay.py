"""The vLLM backend's forward path without vLLM: batches captured from vLLM's builder and layers
(tests/data/vllm_replay.pt, made by tests/data/make_vllm_replay.py) replayed through the backend's
vLLM-free modules (kv_cache, paged_attention), on CPU (CI) and on CUDA (marked gpu, both kernels):
the cache write and the attention of a mixed step, in each of vLLM's cache layouts, against the float64
reference; on CUDA also captured once in a CUDA graph and replayed on another batch of the same shapes.
GPU: python3 -m pytest -q tests/test_vllm_replay.py"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import HAS_GPU
from torch_attn.integrations.vllm.kv_cache import kv_cache_views, write_kv_cache
from torch_attn.integrations.vllm.paged_attention import LayerOptions, TorchAttnMetadata, attend
from vllm_batches import (STEPS, assert_cache_equal, assert_output_matches_reference, expected_cache,
                          fill_cached_tokens, step_data)

REPLAY_FILE = Path(__file__).parent / "data" / "vllm_replay.pt"
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]


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


def forward_step(data, kv_cache, metadata, slot_mapping, options, output) -> None:
    """What vLLM's Attention layer runs per step on our backend: impl.do_kv_cache_update, then impl.forward."""
    k_cache, v_cache = kv_cache_views(kv_cache, data.query.shape[-1])
    write_kv_cache(data.key, data.value, k_cache, v_cache, slot_mapping)
    attend(data.query, k_cache, v_cache, metadata, options, output)


def check_step(step_name, data, kv_cache_before, kv_cache, output, replay, options) -> None:
    step, saved = STEPS[step_name], replay[step_name]
    batch = dict(block_table=saved["metadata"]["block_table"], slot_mapping=saved["slot_mapping"])
    assert_cache_equal(kv_cache.cpu(), expected_cache(kv_cache_before.cpu(), batch, data))
    assert_output_matches_reference(output, step, data, sm_scale=options.sm_scale, window_left=options.window_left,
                                    logits_soft_cap=options.logits_soft_cap, sinks=options.sinks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["LBNHC", "LBHNC", "BLHNC"])
@pytest.mark.parametrize("mask", ["causal", "window-softcap", "sinks"])
def test_replayed_step_matches_reference(device, layout, mask, cuda_backend):
    replay = load_replay()
    step_name, dtype = "mixed", torch.bfloat16
    metadata, slot_mapping = replayed(replay, step_name, device)
    options = options_of(replay, mask, device)
    data = step_data(STEPS[step_name], dtype, device, seed=2)
    kv_cache = cache_in_layout(replay["layouts"][layout], dtype, device)
    fill_cached_tokens(kv_cache, STEPS[step_name], replay[step_name]["metadata"], data)
    before = kv_cache.clone()
    output = torch.full_like(data.query, float("nan"))
    forward_step(data, kv_cache, metadata, slot_mapping, options, output)
    check_step(step_name, data, before, kv_cache, output, replay, options)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no GPU")
@pytest.mark.parametrize("mask", ["causal", "sinks"])
def test_one_cuda_graph_replays_other_batches(mask, cuda_backend):
    """vLLM's FULL CUDA graphs: captured on one step, replayed with another step's lengths, pages and
    tokens written into the same buffers (the builder's metadata is those buffers)."""
    replay = load_replay()
    dtype, device = torch.bfloat16, "cuda"
    options = options_of(replay, mask, device)
    metadata, slot_mapping = replayed(replay, "mixed", device)
    data = step_data(STEPS["mixed"], dtype, device, seed=2)
    kv_cache = cache_in_layout(replay["layouts"]["LBNHC"], dtype, device)
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
        fill_cached_tokens(kv_cache, STEPS[step_name], replay[step_name]["metadata"], data)
        output.fill_(float("nan"))
        return kv_cache.clone()

    load_step("mixed", seed=2)
    forward_step(data, kv_cache, metadata, slot_mapping, options, output)  # warm: scratch and lazy inits
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward_step(data, kv_cache, metadata, slot_mapping, options, output)
    for step_name, seed in (("mixed_replay", 5), ("mixed", 6)):
        before = load_step(step_name, seed)
        graph.replay()
        torch.cuda.synchronize()
        check_step(step_name, data, before, kv_cache, output, replay, options)
