"""SGLang attention backend running torch.ops.attn.prefill_paged over SGLang's token-to-KV pool:
prefill (forward_extend: new prompts, chunked prefill over a cached prefix, mixed batches with
decode rows) and decode (forward_decode), one op call per layer.

    pip install -e ".[sglang]"
    sglang serve --model-path MODEL --attention-backend torch_attn

SGLang runs the `sglang.srt.plugins` entry points (pyproject.toml) in each of its processes before
it parses its arguments; register() is ours. In a process that does not load SGLang's plugins, call
torch_attn.integrations.sglang.register() before building the Engine. Modules: backend (the class
SGLang instantiates, its refusals, the pool reads and writes), and the SGLang-free metadata and
paged_attention that do the work (tests/test_sglang_replay.py runs them without SGLang).
Importing this package does not import SGLang.
"""
from __future__ import annotations

NAME = "torch_attn"


def _create_backend(model_runner):
    from .backend import TorchAttnBackend

    return TorchAttnBackend(model_runner)


def register() -> None:
    """Adds NAME to SGLang's attention-backend registry and to the choices of --attention-backend
    (and of --prefill-/--decode-attention-backend, which share that list). SGLang may load its
    plugins again in each process: a second call changes nothing."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    if NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([NAME])
    if NAME not in ATTENTION_BACKENDS:
        register_attention_backend(NAME)(_create_backend)
