"""The SGLang backend's forward path without SGLang: steps captured from SGLang's pools, ForwardBatch
and RadixAttention (tests/data/sglang_replay.pt, made by tests/data/make_sglang_replay.py) replayed
through the backend's SGLang-free modules (metadata, paged_attention), on CPU (CI) and on CUDA (marked
gpu, both kernels): the metadata built from the batch's tensors equals what the backend built in SGLang,
and every output row matches the float64 reference, for a mixed step with pages of 16 and of 1, over
the pool's token-major buffers with NaN in every slot no request owns; on CUDA also a decode step
captured in a CUDA graph (metadata refill and attention) and replayed on another batch of its shapes.
GPU: python3 -m pytest -q tests/test_sglang_replay.py"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import HAS_GPU
from test_paged import wgmma_takes_page_size
from torch_attn.integrations.sglang.metadata import GraphMetadata, TorchAttnMetadata, decode_metadata, extend_metadata
from torch_attn.integrations.sglang.paged_attention import LayerOptions, attend, paged_cache

REPLAY_FILE = Path(__file__).parent / "data" / "sglang_replay.pt"
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
MIXED = {"mixed-p16": ["causal", "window-softcap", "sinks"], "mixed-p1": ["causal"]}


def load_replay() -> dict:
    return torch.load(REPLAY_FILE, weights_only=True)


def on(saved, device):
    """The recorded tensors (in nested dicts too) on `device`."""
    if isinstance(saved, dict):
        return {name: on(value, device) for name, value in saved.items()}
    return saved.to(device) if isinstance(saved, torch.Tensor) else saved


def pool_buffers(step: dict, device, out: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The layer's [rows, Hkv, D] key and value buffers as SGLang's pool held them after the step's write:
    the requests' slots, NaN everywhere else (into `out`, for a graph's fixed buffers)."""
    keys, values = step["keys"], step["values"]
    if out is None:
        out = tuple(torch.empty((step["pool_rows"], *keys.shape[1:]), dtype=keys.dtype, device=device) for _ in "kv")
    for buffer, rows in zip(out, (keys, values)):
        buffer.fill_(math.nan)
        buffer[step["slots"].to(device)] = rows.to(device)
    return out


def built_metadata(step: dict) -> TorchAttnMetadata:
    """What the backend's init_forward_metadata builds from the batch (eager: tables as wide as the
    longest request, from the host copy of seq_lens)."""
    tables = (step["req_to_token"], step["req_pool_indices"], step["page_size"], int(step["seq_lens_cpu"].max()))
    if step["decode"]:
        return decode_metadata(step["seq_lens"], *tables)
    return extend_metadata(step["extend_seq_lens"], step["seq_lens"], *tables)


def assert_matches_reference(output: torch.Tensor, layer: dict) -> None:
    got, want = output.cpu().double(), layer["expected"].cpu().double()
    assert torch.isfinite(got).all(), "non-finite output rows"
    err = (got - want).abs().max().item()
    assert err <= layer["allowed"], f"max |out - ref| = {err:.3e} > allowed {layer['allowed']:.3e}"


def run_step(step: dict, metadata: TorchAttnMetadata, layer: dict, k_buffer, v_buffer, output) -> None:
    """The backend's per-layer forward after SGLang's cache write: the pool as paged caches, one op call."""
    caches = [paged_cache(buffer, step["page_size"], "nhd") for buffer in (k_buffer, v_buffer)]
    attend(step["query"], *caches, "NHD", metadata, LayerOptions(**layer["options"]), output, layer["sinks"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step_name,layer_name", [(s, name) for s, names in MIXED.items() for name in names])
def test_replayed_mixed_step_matches_reference(device, step_name, layer_name, cuda_backend):
    step = on(load_replay()[step_name], device)
    metadata = built_metadata(step)
    for name, tensor in step["metadata"].items():
        assert torch.equal(getattr(metadata, name).cpu(), tensor.cpu()), f"{name} differs from the backend's in SGLang"
    output = torch.full_like(step["query"], math.nan)
    if device == "cuda" and cuda_backend == "sm90" and not wgmma_takes_page_size(step["page_size"]):
        with pytest.raises(ValueError, match="TORCH_ATTN_BACKEND=sm90: the wgmma kernel takes paged caches"):
            run_step(step, metadata, step["layers"][layer_name], *pool_buffers(step, device), output)
        return  # SGLang's default pages of one token run on the mma.sync kernel (sm80 and auto)
    run_step(step, metadata, step["layers"][layer_name], *pool_buffers(step, device), output)
    assert_matches_reference(output, step["layers"][layer_name])


def test_the_path_has_no_host_sync():
    """Metadata and attention on meta tensors (no data at all): no .item(), no host branch on device values."""
    step = on(load_replay()["mixed-p16"], "meta")
    metadata = extend_metadata(step["extend_seq_lens"], step["seq_lens"], step["req_to_token"],
                               step["req_pool_indices"], step["page_size"])
    k_buffer = torch.empty((step["pool_rows"], *step["keys"].shape[1:]), dtype=torch.bfloat16, device="meta")
    output = torch.empty_like(step["query"])
    run_step(step, metadata, step["layers"]["sinks"], k_buffer, k_buffer, output)
    graph = GraphMetadata(8, step["req_to_token"], step["page_size"])
    graph.fill(step["req_to_token"], step["req_pool_indices"], step["seq_lens"], step["page_size"],
               step["extend_seq_lens"])


@pytest.mark.parametrize("device", DEVICES)
def test_graph_buffers_give_the_recorded_decode_results(device, cuda_backend):
    """GraphMetadata (what init_forward_metadata_in_graph fills) for the two decode steps, in turn through
    the same buffers; on CUDA the refill and the attention are one captured graph, replayed for both."""
    replay = load_replay()
    steps = [on(replay[name], device) for name in ("decode-p16", "decode_replay-p16")]
    first = steps[0]
    # SGLang's graph runner's static inputs: the batch tensors, the pool and the query, refilled per replay.
    static = {name: first[name].clone() for name in ("req_to_token", "req_pool_indices", "seq_lens", "query")}
    buffers = pool_buffers(first, device)
    graph_metadata = GraphMetadata(6, static["req_to_token"], first["page_size"])
    output = torch.empty_like(static["query"])

    def forward():
        metadata = graph_metadata.fill(static["req_to_token"], static["req_pool_indices"], static["seq_lens"],
                                       first["page_size"])
        run_step(first | {"query": static["query"]}, metadata, first["layers"]["sinks"], *buffers, output)

    graph = None
    if device == "cuda":
        forward()  # warm: the op's scratch and lazy inits
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
    for step in steps:
        for name, tensor in static.items():
            tensor.copy_(step[name])
        pool_buffers(step, device, out=buffers)
        output.fill_(math.nan)
        if graph is None:
            forward()
        else:
            graph.replay()
            torch.cuda.synchronize()
        assert_matches_reference(output, step["layers"]["sinks"])
