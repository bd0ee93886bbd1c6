"""The attention backend SGLang instantiates for --attention-backend torch_attn: the batch's metadata
once per forward, then per layer the KV write (SGLang's own set_kv_buffer) and one prefill_paged call
into SGLang's output buffer. What it cannot compute exactly it refuses by name."""
from __future__ import annotations

import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.runtime_context import get_parallel

from .metadata import GraphMetadata, decode_metadata, extend_metadata
from .paged_attention import POOL_LAYOUTS, LayerOptions, attend, paged_cache

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)  # the fp8 pools prefill_paged reads
# Modes with queries that are the last tokens of their request, under a causal mask: one op call.
# Speculative verify and draft-extend batches carry tree masks; the rest are other models' modes.
EXTEND_MODES = (ForwardMode.EXTEND, ForwardMode.MIXED)


def _refuse(what: str) -> NotImplementedError:
    return NotImplementedError(f"torch_attn SGLang backend: {what} is not supported")


def check_pool(model_runner) -> None:
    """The pools this backend reads: SGLang's plain MHA pool in its token- or page-major layout."""
    pool = model_runner.token_to_kv_pool
    if getattr(model_runner, "use_mla_backend", False):
        raise _refuse("MLA (use the model's MLA backends)")
    if not isinstance(pool, MHATokenToKVPool):
        raise _refuse(f"the KV pool {type(pool).__name__} (a hybrid sliding-window pool: launch with "
                      f"--disable-hybrid-swa-memory; only MHATokenToKVPool is read)")
    if pool.kv_cache_layout not in POOL_LAYOUTS:
        raise _refuse(f"the KV cache layout {pool.kv_cache_layout!r} (only {sorted(POOL_LAYOUTS)})")
    if pool.is_quantized_kv_cache:
        raise _refuse(f"the quantized KV pool of {pool.quant_method.__class__.__name__} (fp8 pools are)")
    if pool.dtype not in (*FP8_DTYPES, torch.float16, torch.bfloat16, torch.float32):
        raise _refuse(f"a KV cache of {pool.dtype}")
    if get_parallel().dcp_enabled:
        raise _refuse("decode context parallelism (DCP)")


def layer_options(layer, chunk_size: int) -> LayerOptions:
    """A RadixAttention layer's arguments; a layer this backend would compute differently raises."""
    if layer.is_cross_attention or layer.attn_type != AttentionType.DECODER:
        kind = "cross attention" if layer.is_cross_attention else f"attn_type {layer.attn_type.value!r}"
        raise _refuse(f"{kind} (only causal decoder self-attention)")
    if layer.logit_cap > 0 and layer.logit_capping_method != "tanh":
        raise _refuse(f"logit_capping_method {layer.logit_capping_method!r} (only 'tanh')")
    if layer.xai_temperature_len > 0:
        raise _refuse("Grok's attention temperature (xai_temperature_len)")
    window = layer.sliding_window_size
    return LayerOptions(sm_scale=float(layer.scaling), window_left=window if window is not None and window >= 0 else -1,
                        logits_soft_cap=float(layer.logit_cap) if layer.logit_cap > 0 else 0.0,
                        chunk_size=chunk_size if layer.use_irope else 0)


def check_mode(forward_batch) -> None:
    mode = forward_batch.forward_mode
    if mode not in (*EXTEND_MODES, ForwardMode.DECODE):
        raise _refuse(f"forward mode {mode.name} (speculative decoding's verify and draft batches included)")
    if mode == ForwardMode.DECODE and forward_batch.spec_info is not None:
        raise _refuse("speculative draft decode")
    if forward_batch.encoder_lens is not None:
        raise _refuse("encoder-decoder batches (encoder_lens)")
    if forward_batch.mha_return_lse:
        raise _refuse("returning the LSE (mha_return_lse)")


class TorchAttnBackend(AttentionBackend):
    def __init__(self, model_runner):
        super().__init__()
        check_pool(model_runner)
        self.device = model_runner.device
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.page_size = model_runner.page_size
        self.chunk_size = getattr(model_runner, "attention_chunk_size", None) or 0
        self.forward_metadata = None
        self.graph_metadata: GraphMetadata | None = None

    def _max_tokens(self, forward_batch) -> int | None:
        """The widest request's tokens from SGLang's host copy of seq_lens (no device sync), or None."""
        seq_lens_cpu = forward_batch.seq_lens_cpu
        return int(seq_lens_cpu.max()) if seq_lens_cpu is not None and seq_lens_cpu.numel() else None

    def init_forward_metadata(self, forward_batch):
        """Eager batches: tables as wide as the batch's longest request."""
        if forward_batch.forward_mode.is_idle():
            self.forward_metadata = None
            return
        check_mode(forward_batch)
        tables = (self.req_to_token, forward_batch.req_pool_indices, self.page_size, self._max_tokens(forward_batch))
        if forward_batch.forward_mode == ForwardMode.DECODE:
            self.forward_metadata = decode_metadata(forward_batch.seq_lens, *tables)
        else:
            self.forward_metadata = extend_metadata(forward_batch.extend_seq_lens, forward_batch.seq_lens, *tables)

    # CUDA graphs: the buffers are SGLang's to size; the in-graph step refills them from the graph
    # runner's static batch tensors at every replay, so nothing runs on the host between replays.
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        self.graph_metadata = GraphMetadata(max_bs, self.req_to_token, self.page_size)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        check_mode(forward_batch)

    def init_forward_metadata_in_graph(self, forward_batch):
        if self.graph_metadata is None:
            raise RuntimeError("torch_attn SGLang backend: init_cuda_graph_state was not called before capture")
        decode = forward_batch.forward_mode == ForwardMode.DECODE
        self.forward_metadata = self.graph_metadata.fill(
            self.req_to_token, forward_batch.req_pool_indices, forward_batch.seq_lens, self.page_size,
            None if decode else forward_batch.extend_seq_lens)

    def get_cuda_graph_seq_len_fill_value(self):
        return 1  # a padded request reads one key of the pool's padding page; its rows are dropped

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, sinks=None, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, sinks, kwargs)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, sinks=None, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, sinks, kwargs)

    def _forward(self, q, k, v, layer, forward_batch, save_kv_cache, sinks, kwargs):
        given = sorted(name for name, value in kwargs.items() if value is not None and value is not False)
        if given:  # score_mod, MLA's rope parts, sparse indices, ...: each changes the result
            raise _refuse(f"the forward arguments {given}")
        options = layer_options(layer, self.chunk_size)
        pool = self.token_to_kv_pool
        fp8 = pool.dtype in FP8_DTYPES
        scales = (layer.k_scale, layer.v_scale) if fp8 and layer.k_scale is not None else (None, None)
        if save_kv_cache and k is not None and v is not None:
            loc = KVWriteLoc.for_layer(forward_batch, layer)
            if scales[0] is None:
                pool.set_kv_buffer(layer, loc, k, v)
            else:  # the pool divides by the scales in place: not the model's k and v
                pool.set_kv_buffer(layer, loc, k.clone(), v.clone(), *scales)
        output = forward_batch._attn_output
        if output is None:
            output = q.new_empty(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)
        caches = [paged_cache(buffer, self.page_size, pool.kv_cache_layout)
                  for buffer in pool.get_kv_buffer(layer.layer_id)]
        descales = [None if s is None else s.detach().to(torch.float32).reshape(1) for s in scales]
        attend(q.view(-1, layer.tp_q_head_num, layer.qk_head_dim), *caches, POOL_LAYOUTS[pool.kv_cache_layout],
               self.forward_metadata, options, output.view(-1, layer.tp_q_head_num, layer.v_head_dim), sinks,
               *descales)
        return output

    def support_triton(self):
        return False
