"""Writes tests/data/sglang_replay.pt from the real SGLang (run it where SGLang is installed):

    python3 tests/data/make_sglang_replay.py

For each recorded step (tests/test_sglang_backend.py's steps, built through SGLang's pools and
ForwardBatch, run through RadixAttention on our backend): the ForwardBatch tensors and the
req_to_token table the backend reads, the metadata it built from them, the query, the pool's keys and
values after SGLang's own cache write (the slots the step's requests own; every other slot is NaN in
the pool, and in the replay), and per layer setting the LayerOptions the backend took from the layer,
the float64 reference's output (as float32) and the error FlashAttention's rule allows. Under 1 MB."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

import torch_attn.integrations.sglang as torch_attn_sglang  # noqa: E402
from test_sglang_backend import (STEPS, Layer, allowed_error, backend_for, make_batch, model_runner,  # noqa: E402
                                 reference, run_layer)
from test_sglang_replay import REPLAY_FILE  # noqa: E402
from torch_attn.integrations.sglang.backend import layer_options  # noqa: E402

# Four query heads over two KV heads keep the file small; the settings the GPU replay covers.
LAYERS = {"causal": Layer(num_heads=4), "window-softcap": Layer(num_heads=4, sliding_window_size=12, logit_cap=5.0),
          "sinks": Layer(num_heads=4, sinks=True)}
# (step, page size, layer settings, seed); the two decode steps share shapes (one CUDA graph).
RECORDED = {"mixed-p16": ("mixed", 16, list(LAYERS), 1), "mixed-p1": ("mixed", 1, ["causal"], 2),
            "decode-p16": ("decode", 16, ["sinks"], 3), "decode_replay-p16": ("decode_replay", 16, ["sinks"], 4)}


def record(step_name: str, page_size: int, layer_names: list[str], seed: int) -> dict:
    dtype = torch.bfloat16
    runner = model_runner(torch_attn_sglang.NAME, LAYERS["causal"], page_size, dtype)
    backend = backend_for(runner)
    saved = dict(page_size=page_size, pool_rows=runner.token_to_kv_pool.get_key_buffer(0).shape[0], layers={})
    for name in layer_names:
        layer = LAYERS[name]
        batch = make_batch(runner, STEPS[step_name], layer, dtype, seed=seed)  # the same data for every layer
        run_layer(backend, layer, batch)
        want = reference(batch, layer)
        saved["layers"][name] = dict(options=asdict(layer_options(layer.radix_attention(), layer.chunk_size)),
                                     sinks=layer.sink_logits(), expected=want.float(),
                                     allowed=allowed_error(batch, layer, want))
    fb, pool = batch.forward_batch, runner.token_to_kv_pool
    req_to_token = runner.req_to_token_pool.req_to_token
    slots = torch.cat([req_to_token[r, :n] for r, n in zip(fb.req_pool_indices, fb.seq_lens)]).long()
    saved.update(
        decode=step_name.startswith("decode"), req_to_token=req_to_token.clone(),
        req_pool_indices=fb.req_pool_indices, seq_lens=fb.seq_lens, seq_lens_cpu=fb.seq_lens_cpu,
        extend_seq_lens=fb.extend_seq_lens, metadata=asdict(backend.forward_metadata),
        query=batch.query.view(-1, LAYERS["causal"].num_heads, pool.head_dim), slots=slots,
        keys=pool.get_key_buffer(0)[slots].clone(), values=pool.get_value_buffer(0)[slots].clone())
    return saved


def main() -> None:
    replay = {name: record(*args) for name, args in RECORDED.items()}
    torch.save(replay, REPLAY_FILE)
    print(f"wrote {REPLAY_FILE} ({REPLAY_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
