"""vLLM attention backend running torch.ops.attn.prefill_paged (one call per layer for a whole
mixed batch: prefills, chunked prefills over a cached prefix, decode rows).

    pip install -e ".[vllm]"
    vllm serve MODEL --attention-backend TORCH_ATTN     # LLM(..., attention_backend="TORCH_ATTN")

vLLM finds register() through the `vllm.general_plugins` entry point (pyproject.toml) in each of
its processes. Modules: backend (what vLLM selects on: the declarations), builder (vLLM's batch
metadata -> ours), impl (the layer's cache write and forward), and the vLLM-free paged_attention
and kv_cache that do the work (tests/vllm_replay.py runs them on a GPU without vLLM).
Importing this package does not import vLLM.
"""
from __future__ import annotations

NAME = "TORCH_ATTN"
BACKEND_CLASS = "torch_attn.integrations.vllm.backend.TorchAttnBackend"


def register() -> None:
    """The vLLM plugin: adds NAME to vLLM's attention-backend registry. vLLM may load its plugins
    more than once per process, so a second call leaves the registration as it is."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if NAME not in AttentionBackendEnum.__members__:
        register_backend(NAME, BACKEND_CLASS)
