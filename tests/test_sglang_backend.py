"""The SGLang backend (torch_attn/integrations/sglang/) against the real SGLang package, on our CPU path:
its plugin loading, registry and --attention-backend flag; SGLang's own dense-attention test cases
(sglang.test.kits, the harness SGLang's backend unit tests use: its ModelRunner stand-in, real pools,
ForwardBatch and RadixAttention); and scheduler steps built here the way the scheduler lays them out
(pages handed out shuffled, request slots out of order, prefix tokens in the pool), run through
RadixAttention and checked row by row against the float64 reference and against SGLang's torch_native
backend on the same batch: prefill, extend over a cached prefix, decode, mixed, GQA, sliding window,
soft cap, sinks, Llama 4 chunks, page sizes 1 and 16, both pool layouts, fp8 pools, the CUDA-graph
buffers; and the refusals. Skipped where SGLang is not installed (CI): the SGLang-free part is replayed
by tests/test_sglang_replay.py there and on the GPU."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import torch

sglang = pytest.importorskip("sglang", reason="SGLang is not installed (pip install -e '.[sglang]')")

from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS  # noqa: E402
from sglang.srt.layers.radix_attention import AttentionType, RadixAttention  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context  # noqa: E402
from sglang.test.kits.attention_unittest.attention_methods import dense_attention as kit  # noqa: E402

import torch_attn.integrations.sglang as torch_attn_sglang  # noqa: E402
from conftest import EPS, indptr_of  # noqa: E402
from torch_attn.integrations.sglang.backend import TorchAttnBackend  # noqa: E402
from torch_attn.reference import prefill_reference  # noqa: E402

MAX_CONTEXT_LEN = 128
NUM_REQ_SLOTS = 6
HEAD_DIM = 64


@dataclass(frozen=True)
class Step:
    """One scheduler step: per request (tokens already in the pool, new tokens), and the mode."""

    requests: tuple[tuple[int, int], ...]
    mode: ForwardMode = ForwardMode.EXTEND

    @property
    def num_tokens(self) -> int:
        return sum(new for _, new in self.requests)


# A prefill of a full page, one past it, an extend over a cached prefix of a page and a half, a decode
# batch (a row at a page edge), a mixed batch (chunked prefill beside decode rows), and a decode batch
# of the same size as the first (one CUDA graph replays both: tests/test_sglang_replay.py).
STEPS = {
    "prefill": Step(((0, 37), (0, 16), (0, 1))),
    "extend": Step(((24, 20), (48, 5), (7, 1))),
    "decode": Step(((70, 1), (15, 1), (16, 1), (1, 1)), ForwardMode.DECODE),
    "mixed": Step(((0, 37), (48, 20), (70, 1), (15, 1)), ForwardMode.MIXED),
    "decode_replay": Step(((33, 1), (90, 1), (3, 1), (47, 1)), ForwardMode.DECODE),  # decode's shapes, other lengths
}


@dataclass(frozen=True)
class Layer:
    """A RadixAttention layer's settings, and the forward's sinks (gpt-oss)."""

    num_heads: int = 8
    num_kv_heads: int = 2
    sliding_window_size: int = -1
    logit_cap: float = 0.0
    sinks: bool = False
    chunk_size: int = 0  # Llama 4: the model's attention_chunk_size, the layer's use_irope

    def radix_attention(self) -> RadixAttention:
        return RadixAttention(self.num_heads, HEAD_DIM, HEAD_DIM ** -0.5, self.num_kv_heads, layer_id=0,
                              logit_cap=self.logit_cap, sliding_window_size=self.sliding_window_size,
                              use_irope=self.chunk_size > 0)

    def sink_logits(self) -> torch.Tensor | None:
        return torch.linspace(-1.0, 2.0, self.num_heads) if self.sinks else None

    @property
    def torch_native_computes_it(self) -> bool:
        return self.logit_cap == 0 and not self.sinks and self.chunk_size == 0


LAYERS = {"gqa": Layer(), "mha": Layer(num_kv_heads=8), "mqa": Layer(num_kv_heads=1),
          "window": Layer(sliding_window_size=12), "softcap": Layer(logit_cap=5.0), "sinks": Layer(sinks=True),
          "chunked": Layer(chunk_size=32)}


def model_runner(backend: str, layer: Layer, page_size: int, dtype: torch.dtype,
                 kv_dtype: torch.dtype | None = None):
    """SGLang's ModelRunner stand-in from its own attention test kit, with real pools for our shapes
    (an fp8 pool when kv_dtype is fp8, as --kv-cache-dtype makes it)."""
    case = kit.DenseAttentionCase(name="torch_attn", backend=backend, forward_mode=ForwardMode.EXTEND,
                                  num_heads=layer.num_heads, num_kv_heads=layer.num_kv_heads, page_size=page_size,
                                  prefix_lens=(0,) * NUM_REQ_SLOTS)
    config = kit.TinyModelConfig(num_heads=layer.num_heads, num_kv_heads=layer.num_kv_heads, head_dim=HEAD_DIM,
                                 hidden_size=layer.num_heads * HEAD_DIM, context_len=MAX_CONTEXT_LEN)
    runner = kit.MockModelRunner(case=case, model_config=config, dtype=dtype, device="cpu",
                                 max_context_len=MAX_CONTEXT_LEN, head_dim=HEAD_DIM)
    runner.attention_chunk_size = layer.chunk_size or None
    if kv_dtype is not None:
        pool = runner.token_to_kv_pool
        runner.token_to_kv_pool = MHATokenToKVPool(size=pool.size, page_size=page_size, dtype=kv_dtype,
                                                   head_num=layer.num_kv_heads, head_dim=HEAD_DIM, layer_num=1,
                                                   device="cpu", enable_memory_saver=False, enable_alt_stream=False)
    return runner


@dataclass
class Batch:
    """A step laid out as the scheduler lays it out, and its random data."""

    step: Step
    forward_batch: ForwardBatch
    query: torch.Tensor  # [tokens, Hq * D]
    key: torch.Tensor  # [tokens, Hkv * D]
    value: torch.Tensor
    cached_keys: list[torch.Tensor] = field(default_factory=list)  # per request [cached, Hkv, D]
    cached_values: list[torch.Tensor] = field(default_factory=list)


def make_batch(runner, step: Step, layer: Layer, dtype: torch.dtype, seed: int) -> Batch:
    """Pages handed out shuffled (page 0 is the pool's padding page), request slots out of order, each
    request's cached tokens written into the pool by the pool itself, every other slot NaN."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    page_size, pool = runner.page_size, runner.token_to_kv_pool
    for buffer in (*pool.k_buffer, *pool.v_buffer):
        buffer.view(torch.uint8).fill_(0x7F) if buffer.element_size() == 1 else buffer.fill_(math.nan)
    free_pages = list(range(1, pool.size // page_size))
    rng.shuffle(free_pages)
    slots_of_requests = rng.sample(range(NUM_REQ_SLOTS), len(step.requests))
    req_to_token = runner.req_to_token_pool.req_to_token
    req_to_token.fill_(0)
    out_cache_loc, positions, cached_locs = [], [], []
    for slot, (cached, new) in zip(slots_of_requests, step.requests):
        pages = [free_pages.pop() for _ in range(-(-(cached + new) // page_size))]
        locs = [pages[pos // page_size] * page_size + pos % page_size for pos in range(cached + new)]
        req_to_token[slot, :len(locs)] = torch.tensor(locs, dtype=torch.int32)
        cached_locs.append(locs[:cached])
        out_cache_loc += locs[cached:]
        positions += list(range(cached, cached + new))

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    n, kv_width = step.num_tokens, layer.num_kv_heads * HEAD_DIM
    batch = Batch(step, None, rand(n, layer.num_heads * HEAD_DIM), rand(n, kv_width), rand(n, kv_width))
    attn = layer.radix_attention()
    for (cached, _), locs in zip(step.requests, cached_locs):
        keys, values = rand(cached, layer.num_kv_heads, HEAD_DIM), rand(cached, layer.num_kv_heads, HEAD_DIM)
        if cached:
            pool.set_kv_buffer(attn, torch.tensor(locs), keys.clone(), values.clone())
        batch.cached_keys.append(keys)
        batch.cached_values.append(values)
    seq_lens = [cached + new for cached, new in step.requests]
    fb = ForwardBatch(forward_mode=step.mode, batch_size=len(step.requests),
                      input_ids=torch.zeros(n, dtype=torch.int64),
                      req_pool_indices=torch.tensor(slots_of_requests, dtype=torch.int64),
                      seq_lens=torch.tensor(seq_lens, dtype=torch.int64), seq_lens_cpu=torch.tensor(seq_lens),
                      out_cache_loc=torch.tensor(out_cache_loc, dtype=torch.int64), seq_lens_sum=sum(seq_lens),
                      positions=torch.tensor(positions, dtype=torch.int64))
    runner.kv_index_translator.bind_own_plan(fb)  # as ForwardBatch.init_new binds the iteration's plan
    if step.mode != ForwardMode.DECODE:
        fb.extend_prefix_lens = torch.tensor([c for c, _ in step.requests], dtype=torch.int32)
        fb.extend_seq_lens = torch.tensor([m for _, m in step.requests], dtype=torch.int32)
        fb.extend_prefix_lens_cpu = [c for c, _ in step.requests]
        fb.extend_seq_lens_cpu = [m for _, m in step.requests]
        fb.extend_num_tokens = n
        fb.extend_start_loc = torch.cumsum(fb.extend_seq_lens, 0, dtype=torch.int32) - fb.extend_seq_lens
    batch.forward_batch = fb
    return batch


def run_layer(backend, layer: Layer, batch: Batch) -> torch.Tensor:
    """What a model's forward does: the backend's metadata once, then the layer (RadixAttention.forward)."""
    attn = layer.radix_attention()
    kwargs = {} if layer.sinks is False else {"sinks": layer.sink_logits()}
    with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
        backend.init_forward_metadata(batch.forward_batch)
        return attn(batch.query, batch.key, batch.value, batch.forward_batch, **kwargs)


def reference(batch: Batch, layer: Layer, keys=None, values=None, compute_dtype=torch.float64) -> torch.Tensor:
    """Each request over its cached keys then its new ones, causal with the queries last."""
    step = batch.step
    starts = indptr_of([new for _, new in step.requests], "cpu").tolist()
    h = layer.num_kv_heads
    new_k, new_v = batch.key.view(-1, h, HEAD_DIM), batch.value.view(-1, h, HEAD_DIM)
    keys = keys if keys is not None else torch.cat(
        [torch.cat([batch.cached_keys[r], new_k[starts[r]:starts[r + 1]]]) for r in range(len(step.requests))])
    values = values if values is not None else torch.cat(
        [torch.cat([batch.cached_values[r], new_v[starts[r]:starts[r + 1]]]) for r in range(len(step.requests))])
    out, _ = prefill_reference(batch.query.view(-1, layer.num_heads, HEAD_DIM), keys, values, causal=True,
                               sm_scale=HEAD_DIM ** -0.5,
                               window_left=layer.sliding_window_size, logits_soft_cap=layer.logit_cap,
                               chunk_size=layer.chunk_size, sinks=layer.sink_logits(),
                               qo_indptr=indptr_of([new for _, new in step.requests], "cpu"),
                               kv_indptr=indptr_of([c + m for c, m in step.requests], "cpu"),
                               compute_dtype=compute_dtype)
    return out


def allowed_error(batch: Batch, layer: Layer, want: torch.Tensor, **kwargs) -> float:
    """FlashAttention's rule: EPS + twice the error of the same computation at the inputs' dtype."""
    dtype = batch.query.dtype
    if dtype == torch.float32:
        return EPS[dtype]
    baseline = reference(batch, layer, compute_dtype=dtype, **kwargs)
    return EPS[dtype] + 2 * (baseline.double() - want).abs().max().item()


def assert_matches(got: torch.Tensor, want: torch.Tensor, allowed: float, what: str = "reference") -> None:
    got = got.view(want.shape)
    assert torch.isfinite(got).all(), "non-finite output rows"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= allowed, f"max |out - {what}| = {err:.3e} > allowed {allowed:.3e}"


def backend_for(runner):
    torch_attn_sglang.register()
    backend = ATTENTION_BACKENDS[torch_attn_sglang.NAME](runner)  # as ModelRunner builds it from the flag
    assert isinstance(backend, TorchAttnBackend)
    return backend


def test_plugin_entry_point_registers_the_backend():
    """SGLang's load_plugins (every process, before argument parsing) runs our entry point."""
    import importlib.metadata

    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    assert any(p.name == "torch_attn" for p in importlib.metadata.entry_points(group="sglang.srt.plugins")), \
        "no sglang.srt.plugins entry point 'torch_attn': reinstall torch_attn (pip install -e .)"
    load_plugins()
    assert torch_attn_sglang.NAME in ATTENTION_BACKENDS and torch_attn_sglang.NAME in ATTENTION_BACKEND_CHOICES
    torch_attn_sglang.register()  # again, as another plugin load would: no duplicate choice
    assert ATTENTION_BACKEND_CHOICES.count(torch_attn_sglang.NAME) == 1


def test_attention_backend_flag_takes_it():
    """--attention-backend torch_attn, as ServerArgs.add_cli_args declares the flag."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    torch_attn_sglang.register()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(["--model-path", "unused", "--attention-backend", "torch_attn",
                              "--prefill-attention-backend", "torch_attn"])
    assert args.attention_backend == args.prefill_attention_backend == "torch_attn"


KIT_CASES = {case.name: case for case in (*kit.make_dense_cases(torch_attn_sglang.NAME),
                                          *kit.make_swa_no_prefix_input_config_cases(torch_attn_sglang.NAME),
                                          *kit.make_swa_prefix_input_config_cases(torch_attn_sglang.NAME))}


@pytest.mark.parametrize("layout", ["shuffled_pages", "interleaved_pages"])
@pytest.mark.parametrize("name", KIT_CASES)
def test_sglang_dense_attention_kit_cases(name, layout):
    """SGLang's own backend test cases (its kit's fixture, batch and reference) on our backend, float32."""
    import unittest

    torch_attn_sglang.register()
    with torch.no_grad():
        fixture = kit.build_dense_attention_fixture(unittest.TestCase(), KIT_CASES[name], device="cpu",
                                                    dtype=torch.float32, loc_layout=layout)
    assert isinstance(fixture.backend, TorchAttnBackend)
    with torch.no_grad():
        got = kit.run_dense_fixture_eager(fixture)
        want = kit.expected_dense_fixture_output(fixture)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("layer_name", LAYERS)
@pytest.mark.parametrize("step_name", STEPS)
def test_radix_attention_step_matches_reference(step_name, layer_name, page_size, dtype):
    """Every row against the float64 reference, and against SGLang's torch_native backend on the same
    batch where it computes the same thing; the step's keys land at their slots through the pool."""
    step, layer = STEPS[step_name], LAYERS[layer_name]
    runner = model_runner(torch_attn_sglang.NAME, layer, page_size, dtype)
    batch = make_batch(runner, step, layer, dtype, seed=1)
    out = run_layer(backend_for(runner), layer, batch)
    assert out.shape == (step.num_tokens, layer.num_heads * HEAD_DIM) and out.dtype == dtype
    want = reference(batch, layer)
    assert_matches(out, want, allowed_error(batch, layer, want))
    k_buffer = runner.token_to_kv_pool.get_key_buffer(0)
    assert torch.equal(k_buffer[batch.forward_batch.out_cache_loc].flatten(1), batch.key)
    if layer.torch_native_computes_it:
        native = run_layer(ATTENTION_BACKENDS["torch_native"](runner), layer, batch)
        assert_matches(out, native.double().view(want.shape), 2 * allowed_error(batch, layer, want), "torch_native")


def test_output_goes_into_the_buffer_sglang_gives():
    """The prefill graph path hands the backend its output rows (ForwardBatch._attn_output)."""
    layer = LAYERS["gqa"]
    runner = model_runner(torch_attn_sglang.NAME, layer, 16, torch.bfloat16)
    batch = make_batch(runner, STEPS["mixed"], layer, torch.bfloat16, seed=2)
    given = torch.full((batch.step.num_tokens + 3, layer.num_heads * HEAD_DIM), math.nan, dtype=torch.bfloat16)
    batch.forward_batch._attn_output = given[:batch.step.num_tokens]
    out = run_layer(backend_for(runner), layer, batch)
    assert out.data_ptr() == given.data_ptr()
    want = reference(batch, layer)
    assert_matches(given[:batch.step.num_tokens], want, allowed_error(batch, layer, want))
    assert torch.isnan(given[batch.step.num_tokens:]).all()


@pytest.mark.parametrize("step_name", ["extend", "decode"])
def test_page_major_pool_layout(step_name, monkeypatch):
    """SGLANG_USE_HND_KVCACHE=1: the pool's [pages, heads, page_size, D] buffers, read as HND."""
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "1")
    layer, dtype = LAYERS["gqa"], torch.bfloat16
    runner = model_runner(torch_attn_sglang.NAME, layer, 16, dtype)
    assert runner.token_to_kv_pool.kv_cache_layout == "hnd"
    batch = make_batch(runner, STEPS[step_name], layer, dtype, seed=3)
    out = run_layer(backend_for(runner), layer, batch)
    want = reference(batch, layer)
    assert_matches(out, want, allowed_error(batch, layer, want))


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "k_scale"])
def test_fp8_pool(kv_dtype, scaled):
    """--kv-cache-dtype fp8_e4m3 / fp8_e5m2: the pool stores codes (its own write: x / k_scale, cast),
    we read them with the layer's k_scale / v_scale; checked against the reference over what the pool
    holds, dequantized."""
    layer, dtype = LAYERS["window"], torch.bfloat16
    runner = model_runner(torch_attn_sglang.NAME, layer, 16, dtype, kv_dtype=kv_dtype)
    batch = make_batch(runner, STEPS["mixed"], layer, dtype, seed=4)
    attn = layer.radix_attention()
    scales = (torch.tensor(0.05), torch.tensor(0.02)) if scaled else (None, None)
    attn.k_scale, attn.v_scale = scales
    with torch.no_grad(), forward_context(ForwardContext(attn_backend=(backend := backend_for(runner)))):
        backend.init_forward_metadata(batch.forward_batch)
        out = attn(batch.query, batch.key, batch.value, batch.forward_batch)
    pool, fb = runner.token_to_kv_pool, batch.forward_batch
    rows = [runner.req_to_token_pool.req_to_token[r, :n] for r, n in zip(fb.req_pool_indices, fb.seq_lens)]
    slots = torch.cat(rows).long()
    k_scale, v_scale = (1.0, 1.0) if not scaled else (scales[0].item(), scales[1].item())
    keys = pool.get_key_buffer(0)[slots].double() * k_scale
    values = pool.get_value_buffer(0)[slots].double() * v_scale
    want = reference(batch, layer, keys=keys, values=values)
    assert_matches(out, want, allowed_error(batch, layer, want, keys=keys.to(dtype), values=values.to(dtype)))


@pytest.mark.parametrize("step_name", ["decode", "mixed"])
def test_cuda_graph_buffers_give_the_eager_result(step_name):
    """The graph path on CPU: init_cuda_graph_state's buffers, refilled by init_forward_metadata_in_graph
    from the batch (what a captured graph replays), give the eager path's output; a second batch of other
    lengths through the same buffers too."""
    layer, dtype = LAYERS["sinks"], torch.bfloat16
    runner = model_runner(torch_attn_sglang.NAME, layer, 16, dtype)
    backend = backend_for(runner)
    backend.init_cuda_graph_state(max_bs=NUM_REQ_SLOTS, max_num_tokens=256)
    attn = layer.radix_attention()
    for seed in (5, 6):
        batch = make_batch(runner, STEPS[step_name], layer, dtype, seed=seed)
        eager = run_layer(backend, layer, batch)
        with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
            backend.init_forward_metadata_out_graph(batch.forward_batch, in_capture=True)
            backend.init_forward_metadata_in_graph(batch.forward_batch)
            assert backend.forward_metadata.page_table.data_ptr() == backend.graph_metadata.page_table.data_ptr()
            graphed = attn(batch.query, batch.key, batch.value, batch.forward_batch, sinks=layer.sink_logits())
        assert torch.equal(graphed, eager)


def refusal(runner, layer_kwargs=None, mode=None, **forward_kwargs):
    layer = LAYERS["gqa"]
    batch = make_batch(runner, STEPS["extend"], layer, torch.bfloat16, seed=7)
    if mode is not None:
        batch.forward_batch.forward_mode = mode
    attn = RadixAttention(layer.num_heads, HEAD_DIM, HEAD_DIM ** -0.5, layer.num_kv_heads, layer_id=0,
                          **(layer_kwargs or {}))
    backend = backend_for(runner)
    with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
        backend.init_forward_metadata(batch.forward_batch)
        attn(batch.query, batch.key, batch.value, batch.forward_batch, **forward_kwargs)


@pytest.mark.parametrize("case,match", [
    (dict(layer_kwargs=dict(attn_type=AttentionType.ENCODER_ONLY)), "attn_type 'encoder_only'"),
    (dict(layer_kwargs=dict(attn_type=AttentionType.DECODER_BIDIRECTIONAL)), "attn_type 'decoder_bidirectional'"),
    (dict(layer_kwargs=dict(is_cross_attention=True)), "cross attention"),
    (dict(layer_kwargs=dict(logit_cap=5.0, logit_capping_method="other")), "logit_capping_method 'other'"),
    (dict(mode=ForwardMode.TARGET_VERIFY), "forward mode TARGET_VERIFY"),
    (dict(mode=ForwardMode.DRAFT_EXTEND_V2), "forward mode DRAFT_EXTEND_V2"),
    (dict(score_mod=lambda s: s), r"the forward arguments \['score_mod'\]"),
], ids=["encoder-only", "bidirectional", "cross", "capping-method", "target-verify", "draft-extend", "score-mod"])
def test_unsupported_layers_and_batches_are_refused_by_name(case, match):
    runner = model_runner(torch_attn_sglang.NAME, LAYERS["gqa"], 16, torch.bfloat16)
    with pytest.raises(NotImplementedError, match=match):
        refusal(runner, **case)


def test_mla_runners_are_refused():
    runner = model_runner(torch_attn_sglang.NAME, LAYERS["gqa"], 16, torch.bfloat16)
    runner.use_mla_backend = True
    with pytest.raises(NotImplementedError, match="MLA"):
        backend_for(runner)
