"""The vLLM backend (torch_attn/integrations/vllm/) against the real vLLM package: its plugin loading
and registry, its CommonAttentionMetadata and KV-cache layouts, its Attention layer's forward (cache
write, then attention) on our CPU path, checked row by row against the float64 reference, with the
model's dtype in the cache and with fp8 caches (--kv-cache-dtype fp8 / fp8_e4m3 / fp8_e5m2); the
declarations vLLM selects on and the refusals. Skipped where vLLM is not installed (CI): the
vLLM-free part of the path is replayed by tests/test_vllm_replay.py there and on the GPU."""
from __future__ import annotations

import importlib.metadata
import math
import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]')")

from vllm.config import CacheConfig, DeviceConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.forward_context import set_forward_context  # noqa: E402
from vllm.model_executor.layers.attention import Attention  # noqa: E402
from vllm.platforms.interface import DeviceCapability  # noqa: E402
from vllm.plugins import load_general_plugins  # noqa: E402
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.attention.backends.utils import PAD_SLOT_ID  # noqa: E402
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheLayout, KVCacheTensor,  # noqa: E402
                                        create_kv_cache_views)

import torch_attn.integrations.vllm as torch_attn_vllm  # noqa: E402
from torch_attn.integrations.vllm.backend import TorchAttnBackend  # noqa: E402
from torch_attn.integrations.vllm.impl import TorchAttnImpl  # noqa: E402
from vllm_batches import (BLOCK_SIZE, HEAD_SIZE, MIXED, NAN_CODE, NUM_BLOCKS, NUM_HEADS,  # noqa: E402
                          NUM_KV_HEADS, STEPS, assert_cache_equal, assert_output_matches_reference, batch_tensors,
                          coded, expected_cache, fill_cached_tokens, fp8_scales, read_back, step_data)
import vllm_batches  # noqa: E402

LAYER = "model.layers.0.self_attn.attn"
SCALE = HEAD_SIZE ** -0.5


def cpu_vllm_config(cache_dtype: str = "auto") -> VllmConfig:
    """vLLM's engine config for a CPU process, with our backend registered as vLLM's engine does it:
    by loading the general plugins (our entry point). cache_dtype: --kv-cache-dtype."""
    load_general_plugins()
    assert torch_attn_vllm.NAME in AttentionBackendEnum.__members__, \
        "the torch_attn plugin did not register: reinstall torch_attn (pip install -e .) for its entry point"
    return VllmConfig(device_config=DeviceConfig(device="cpu"),
                      cache_config=CacheConfig(block_size=BLOCK_SIZE, cache_dtype=cache_dtype))


@pytest.fixture
def vllm_config():
    config = cpu_vllm_config()
    with set_current_vllm_config(config):
        yield config


def kv_cache_spec(dtype: torch.dtype) -> FullAttentionSpec:
    return FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=NUM_KV_HEADS, head_size=HEAD_SIZE, dtype=dtype)


def vllm_kv_cache(dtype: torch.dtype, layout: KVCacheLayout, num_layers: int = 1,
                  spec: FullAttentionSpec | None = None) -> torch.Tensor:
    """Layer 0's cache as vLLM's worker allocates and views it: one int8 buffer for num_layers layers
    in `layout` (layer-outermost: each layer's blocks together; block-outermost: each block holds
    every layer's page), viewed by create_kv_cache_views as [blocks, heads, block_size, 2 * D] in
    the spec's dtype (a layer's own spec: uint8 for fp8 caches)."""
    spec = spec or kv_cache_spec(dtype)
    page = spec.page_size_bytes
    layer_stride, block_stride = (page * NUM_BLOCKS, page) if layout.is_layer_compact else (page, page * num_layers)
    tensor = KVCacheTensor(size=page * NUM_BLOCKS * num_layers, layers=[f"layer{i}" for i in range(num_layers)],
                           layer_stride=layer_stride, block_stride=block_stride)
    raw = torch.zeros(tensor.size, dtype=torch.int8)
    return create_kv_cache_views(raw, spec, NUM_BLOCKS, layout, tensor)[0]


def common_metadata(step, batch: dict, device="cpu") -> CommonAttentionMetadata:
    """As vLLM's build_attn_metadata builds it from the model runner's tensors."""
    max_query_len, max_seq_len = int(batch["query_start_loc"].diff().max()), int(batch["seq_lens"].max())
    return CommonAttentionMetadata(
        query_start_loc=batch["query_start_loc"].to(device), query_start_loc_cpu=batch["query_start_loc"],
        seq_lens=batch["seq_lens"].to(device), seq_lens_cpu_upper_bound=batch["seq_lens"], num_reqs=step.num_reqs,
        num_actual_tokens=step.num_tokens, max_query_len=max_query_len, max_seq_len=max_seq_len,
        block_table_tensor=batch["block_table"].to(device), slot_mapping=batch["slot_mapping"].to(device), causal=True)


def build_metadata(vllm_config, common: CommonAttentionMetadata, dtype=torch.bfloat16):
    builder_cls = TorchAttnBackend.get_builder_cls()
    builder = builder_cls(kv_cache_spec(dtype), [LAYER], vllm_config, common.query_start_loc.device)
    return builder.build(common_prefix_len=0, common_attn_metadata=common)


# The layer settings of the tests (and of tests/data/vllm_replay.pt), by name.
MASKS = {"causal": dict(), "window-softcap": dict(sliding_window=24, logits_soft_cap=30.0), "sinks": dict(sinks=True)}


def attention_layer(vllm_config, mask: dict) -> Attention:
    """vLLM's Attention layer as a model builds it, on our backend (sinks: gpt-oss's per-head weights)."""
    sinks = torch.linspace(-1.0, 2.0, NUM_HEADS) if mask.get("sinks") else None
    return Attention(NUM_HEADS, HEAD_SIZE, SCALE, num_kv_heads=NUM_KV_HEADS, cache_config=vllm_config.cache_config,
                     per_layer_sliding_window=mask.get("sliding_window"), logits_soft_cap=mask.get("logits_soft_cap"),
                     prefix=LAYER, attn_backend=TorchAttnBackend, sinks=sinks)


def test_plugin_registers_the_backend_through_the_entry_point():
    plugins = [p for p in importlib.metadata.entry_points(group="vllm.general_plugins") if p.name == "torch_attn"]
    assert plugins, "no vllm.general_plugins entry point 'torch_attn': reinstall torch_attn (pip install -e .)"
    for _ in range(2):  # vLLM loads plugins once per process, and again in each worker: idempotent
        plugins[0].load()()
    assert AttentionBackendEnum[torch_attn_vllm.NAME].get_class() is TorchAttnBackend
    assert TorchAttnBackend.get_name() == torch_attn_vllm.NAME


def test_attention_backend_flag_selects_it():
    """--attention-backend TORCH_ATTN, the flag as EngineArgs.add_cli_args declares it, into vLLM's AttentionConfig."""
    from vllm.config import AttentionConfig
    from vllm.engine.arg_utils import get_kwargs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    load_general_plugins()
    parser = FlexibleArgumentParser()
    parser.add_argument("--attention-backend", **get_kwargs(AttentionConfig)["backend"])
    args = parser.parse_args(["--attention-backend", "TORCH_ATTN"])
    backend = AttentionConfig(backend=args.attention_backend).backend
    assert backend is AttentionBackendEnum.TORCH_ATTN and backend.get_class() is TorchAttnBackend


def test_builder_passes_vllm_buffers_through(vllm_config):
    """The metadata holds vLLM's persistent buffers themselves (CUDA-graph replays read new batches
    from them) and builds from meta tensors, so nothing reads device data on the host."""
    batch = batch_tensors(MIXED, seed=0)
    common = common_metadata(MIXED, batch)
    metadata = build_metadata(vllm_config, common)
    assert metadata.query_start_loc is common.query_start_loc and metadata.seq_lens is common.seq_lens
    assert metadata.block_table is common.block_table_tensor and metadata.causal is True
    build_metadata(vllm_config, common_metadata(MIXED, batch, device="meta"))
    builder_cls = TorchAttnBackend.get_builder_cls()
    assert builder_cls.get_cudagraph_support(vllm_config, kv_cache_spec(torch.bfloat16)) is AttentionCGSupport.ALWAYS


@pytest.mark.parametrize("cache_dtype", ["auto", "fp8", "fp8_e5m2"])
def test_the_forward_path_has_no_host_sync(cache_dtype):
    """The impl's cache write and forward on meta tensors (no data at all): no .item(), no host-side
    branch on device values; on the GPU tests/test_vllm_replay.py captures them in a CUDA graph."""
    vllm_config = cpu_vllm_config(cache_dtype)
    with set_current_vllm_config(vllm_config):
        step, dtype = MIXED, torch.bfloat16
        batch = batch_tensors(step, seed=0)
        metadata = build_metadata(vllm_config, common_metadata(step, batch, device="meta"))
        layer = attention_layer(vllm_config, MASKS["window-softcap"])
    layer._k_scale, layer._v_scale = (torch.ones((), device="meta") for _ in range(2))  # as on the model's device
    cache_dtype = torch.uint8 if cache_dtype.startswith("fp8") else dtype  # vLLM's allocation
    kv_cache = torch.empty(NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, 2 * HEAD_SIZE, device="meta", dtype=cache_dtype)
    key = torch.empty(step.num_tokens, NUM_KV_HEADS, HEAD_SIZE, device="meta", dtype=dtype)
    query = torch.empty(step.num_tokens, NUM_HEADS, HEAD_SIZE, device="meta", dtype=dtype)
    layer.impl.do_kv_cache_update(layer, key, key, kv_cache, batch["slot_mapping"].to("meta"))
    output = torch.empty_like(query)
    assert layer.impl.forward(layer, query, key, key, kv_cache, metadata, output) is output


LAYOUTS = [pytest.param(KVCacheLayout.LBNHC, 1, id="LBNHC-NHD"), pytest.param(KVCacheLayout.LBHNC, 1, id="LBHNC-HND"),
           pytest.param(KVCacheLayout.BLHNC, 2, id="BLHNC-block-outermost")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("layout,num_layers", LAYOUTS)
@pytest.mark.parametrize("mask", MASKS)
def test_attention_layer_forward_on_a_mixed_batch(vllm_config, dtype, layout, num_layers, mask):
    """vLLM's Attention layer with our backend, as a model calls it inside the model runner's forward
    context: one step of prefills, a chunked prefill, decode rows and CUDA-graph padding. Every real
    row against the reference; the cache holds the new tokens at their slots and nothing else changed."""
    step = MIXED
    layer = attention_layer(vllm_config, MASKS[mask])
    assert isinstance(layer.impl, TorchAttnImpl)
    batch = batch_tensors(step, seed=1)
    data = step_data(step, dtype, "cpu", seed=2)
    kv_cache = vllm_kv_cache(dtype, layout, num_layers)
    fill_cached_tokens(kv_cache, step, batch, data)
    want_cache = expected_cache(kv_cache, batch, data)
    layer.bind_kv_cache(kv_cache)
    metadata = build_metadata(vllm_config, common_metadata(step, batch), dtype)

    with set_forward_context({LAYER: metadata}, vllm_config, slot_mapping={LAYER: batch["slot_mapping"]}):
        output = layer(data.query.flatten(1), data.key.flatten(1), data.value.flatten(1))

    assert output.shape == (step.num_tokens, NUM_HEADS * HEAD_SIZE)
    assert_cache_equal(kv_cache, want_cache)
    sliding_window = MASKS[mask].get("sliding_window")
    assert_output_matches_reference(output.view(-1, NUM_HEADS, HEAD_SIZE), step, data, sm_scale=SCALE,
                                    window_left=-1 if sliding_window is None else sliding_window - 1,
                                    logits_soft_cap=MASKS[mask].get("logits_soft_cap", 0.0), sinks=layer.impl.sinks)


FP8_CACHES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@pytest.mark.parametrize("cache_dtype", FP8_CACHES)
@pytest.mark.parametrize("layout,num_layers", LAYOUTS)
@pytest.mark.parametrize("mask", MASKS)
def test_attention_layer_forward_with_an_fp8_cache(cache_dtype, layout, num_layers, mask):
    """--kv-cache-dtype fp8 / fp8_e4m3 / fp8_e5m2: the cache as vLLM allocates it (uint8) holding the
    cached tokens' codes, per-tensor scales a calibration would give (amax / the format's max, not 1).
    The step writes exactly the reference codes of its keys and values at their slots (bytes; the NaN
    codes elsewhere untouched), and every real row matches the float64 reference over what the cache
    then holds, dequantized; q is not quantized (bf16 in, bf16 out)."""
    config = cpu_vllm_config(cache_dtype)
    step, dtype, fp8_dtype = MIXED, torch.bfloat16, FP8_CACHES[cache_dtype]
    with set_current_vllm_config(config):
        layer = attention_layer(config, MASKS[mask])
        spec = layer.get_kv_cache_spec(config)
    assert isinstance(layer.impl, TorchAttnImpl) and layer.query_quant is None
    assert spec.dtype == torch.uint8 and spec.page_size_bytes == kv_cache_spec(dtype).page_size_bytes // 2
    batch = batch_tensors(step, seed=1)
    data = step_data(step, dtype, "cpu", seed=2)
    k_scale, v_scale = fp8_scales(data, fp8_dtype)
    layer._k_scale.copy_(k_scale)  # as BaseKVCacheMethod.process_weights_after_loading sets a checkpoint's
    layer._v_scale.copy_(v_scale)
    kv_cache = vllm_kv_cache(dtype, layout, num_layers, spec=spec)
    codes = coded(data, fp8_dtype, k_scale, v_scale)
    fill_cached_tokens(kv_cache, step, batch, codes, poison=NAN_CODE)
    want_cache = expected_cache(kv_cache, batch, codes)
    layer.bind_kv_cache(kv_cache)
    metadata = build_metadata(config, common_metadata(step, batch), dtype)

    with set_forward_context({LAYER: metadata}, config, slot_mapping={LAYER: batch["slot_mapping"]}):
        output = layer(data.query.flatten(1), data.key.flatten(1), data.value.flatten(1))

    assert output.dtype == dtype and output.shape == (step.num_tokens, NUM_HEADS * HEAD_SIZE)
    assert torch.equal(kv_cache, want_cache), "the cache write's codes differ from the reference quantization"
    held = read_back(kv_cache.view(fp8_dtype), step, batch, data.query, k_scale, v_scale)
    sliding_window = MASKS[mask].get("sliding_window")
    assert_output_matches_reference(output.view(-1, NUM_HEADS, HEAD_SIZE), step, held, sm_scale=SCALE,
                                    window_left=-1 if sliding_window is None else sliding_window - 1,
                                    logits_soft_cap=MASKS[mask].get("logits_soft_cap", 0.0), sinks=layer.impl.sinks)


def test_profiling_run_without_metadata_zeroes_the_output(vllm_config):
    impl = TorchAttnImpl(NUM_HEADS, HEAD_SIZE, SCALE, NUM_KV_HEADS, None, None, "auto")
    output = torch.full((5, NUM_HEADS, HEAD_SIZE), math.nan)
    impl.forward(None, output, None, None, torch.empty(0), None, output)
    assert (output == 0).all()


def test_replay_data_is_what_the_builder_makes(vllm_config):
    """tests/data/vllm_replay.pt (for the vLLM-free replay) holds this builder's output for each step;
    regenerate it with tests/data/make_vllm_replay.py when the builder or the steps change."""
    from test_vllm_replay import load_replay

    assert vllm_batches.PAD_SLOT_ID == PAD_SLOT_ID
    replay = load_replay()
    for name, step in STEPS.items():
        batch = batch_tensors(step, seed=replay[name]["seed"])
        metadata = build_metadata(vllm_config, common_metadata(step, batch))
        saved = replay[name]
        for field in ("query_start_loc", "seq_lens", "block_table"):
            assert torch.equal(getattr(metadata, field), saved["metadata"][field]), (name, field)
        assert metadata.causal == saved["metadata"]["causal"]
        assert torch.equal(batch["slot_mapping"], saved["slot_mapping"])
    # The replay's fp8 caches: uint8 buffers with the saved (bf16) shapes and strides, as vLLM's fp8 views have.
    fp8_config = cpu_vllm_config("fp8")
    with set_current_vllm_config(fp8_config):
        spec = attention_layer(fp8_config, MASKS["causal"]).get_kv_cache_spec(fp8_config)
    for name, (layout, num_layers) in {"LBNHC": (KVCacheLayout.LBNHC, 1), "LBHNC": (KVCacheLayout.LBHNC, 1),
                                       "BLHNC": (KVCacheLayout.BLHNC, 2)}.items():
        view = vllm_kv_cache(torch.bfloat16, layout, num_layers, spec=spec)
        assert view.dtype == torch.uint8 and [list(view.shape), list(view.stride())] == \
            [replay["layouts"][name]["shape"], replay["layouts"][name]["stride"]], name


def validation_reasons(**overrides) -> list[str]:
    config = dict(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16, use_mla=False,
                  has_sink=False, use_sparse=False, use_mm_prefix=False, use_per_head_quant_scales=False,
                  device_capability=DeviceCapability(9, 0), attn_type=AttentionType.DECODER)
    return TorchAttnBackend.validate_configuration(**(config | overrides))


def test_declared_support():
    assert validation_reasons() == []
    assert validation_reasons(has_sink=True, has_sliding_window=True, use_batch_invariant=True, block_size=48,
                              dtype=torch.float16, head_size=8) == []
    assert validation_reasons(head_size=256, device_capability=DeviceCapability(8, 0), kv_cache_dtype="bfloat16") == []
    assert validation_reasons(head_size=512, device_capability=DeviceCapability(9, 0), kv_cache_dtype="bfloat16") == []
    for cache_dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):  # per-tensor scales, under fp16 and bf16 models, sm_80 up
        assert validation_reasons(kv_cache_dtype=cache_dtype) == []
        assert validation_reasons(kv_cache_dtype=cache_dtype, dtype=torch.float16, head_size=16, has_sink=True,
                                  has_sliding_window=True, device_capability=DeviceCapability(8, 0)) == []


@pytest.mark.parametrize("overrides,reason", [
    (dict(head_size=520), "head_size not supported"),
    (dict(head_size=100), "head_size not supported"),
    (dict(dtype=torch.float32), "dtype not supported"),
    (dict(kv_cache_dtype="fp8", head_size=72), "kv_cache_dtype fp8 needs a head size that is a multiple of 16"),
    (dict(kv_cache_dtype="fp8", use_per_head_quant_scales=True), "per-head quant scales not supported"),
    (dict(kv_cache_dtype="fp8_per_token_head"), "kv_cache_dtype not supported"),
    (dict(kv_cache_dtype="int8_per_token_head"), "kv_cache_dtype not supported"),
    (dict(kv_cache_dtype="nvfp4"), "kv_cache_dtype not supported"),
    (dict(kv_cache_dtype="float16"), "kv_cache_dtype float16 differs from the model dtype torch.bfloat16"),
    (dict(device_capability=DeviceCapability(7, 5)), "compute capability not supported"),
    (dict(use_mla=True), "MLA not supported"),
    (dict(attn_type=AttentionType.ENCODER_ONLY), "attention type encoder_only not supported"),
    (dict(use_non_causal=True), "non-causal attention not supported"),
], ids=["head520", "head100", "fp32", "fp8-head72", "fp8-per-head-scales", "fp8-per-token-head", "int8-per-token-head",
        "nvfp4", "cache-dtype-mismatch", "sm75", "mla", "encoder", "noncausal"])
def test_unsupported_configurations_are_refused_at_selection(overrides, reason):
    assert any(reason in r for r in validation_reasons(**overrides)), validation_reasons(**overrides)


def test_fp8_caches_are_refused_where_the_wgmma_kernel_is_forced(monkeypatch):
    monkeypatch.setenv("TORCH_ATTN_BACKEND", "sm90")
    assert any("the wgmma kernel has no fp8 variant yet" in r for r in validation_reasons(kv_cache_dtype="fp8"))
    assert validation_reasons() == []


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(kv_cache_dtype="fp8_per_token_head"), NotImplementedError,
     "kv_cache_dtype='fp8_per_token_head' is not supported"),
    (dict(kv_cache_dtype="int8_per_token_head"), NotImplementedError,
     "kv_cache_dtype='int8_per_token_head' is not supported"),
    (dict(kv_cache_dtype="fp8_e5m2", head_size=72), ValueError,
     "kv_cache_dtype='fp8_e5m2' needs a head_size that is a multiple of 16, got 72"),
    (dict(head_size=520), ValueError, "head_size must be a multiple of 8 from 8 to 512, got 520"),
    (dict(alibi_slopes=[0.5] * NUM_HEADS), NotImplementedError, "ALiBi"),
    (dict(attn_type=AttentionType.ENCODER_ONLY), NotImplementedError, "attn_type 'encoder_only' is not supported"),
], ids=["fp8-per-token-head", "int8-per-token-head", "fp8-head72", "head520", "alibi", "encoder"])
def test_unsupported_layers_are_refused_by_name(vllm_config, kwargs, error, match):
    args = dict(num_heads=NUM_HEADS, head_size=HEAD_SIZE, scale=SCALE, num_kv_heads=NUM_KV_HEADS, alibi_slopes=None,
                sliding_window=None, kv_cache_dtype="auto") | kwargs
    with pytest.raises(error, match=match):
        TorchAttnImpl(**args)


def test_per_request_causal_flags_are_refused(vllm_config):
    batch = batch_tensors(MIXED, seed=0)
    common = common_metadata(MIXED, batch).replace(causal=torch.ones(MIXED.num_reqs, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="per-request causal flags"):
        build_metadata(vllm_config, common)


def test_batch_invariant_mode_turns_on_the_ops_mode(vllm_config, monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    monkeypatch.delenv("TORCH_ATTN_BATCH_INVARIANT", raising=False)
    TorchAttnImpl(NUM_HEADS, HEAD_SIZE, SCALE, NUM_KV_HEADS, None, None, "auto")
    assert os.environ["TORCH_ATTN_BATCH_INVARIANT"] == "1"
