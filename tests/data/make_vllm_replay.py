"""Writes tests/data/vllm_replay.pt from the real vLLM (run it where vLLM is installed):

    python3 tests/data/make_vllm_replay.py

For each step of tests/vllm_batches.py, what our builder makes of vLLM's CommonAttentionMetadata
(and the step's slot mapping); the strides of vLLM's cache view in three KVCacheLayouts; and the
LayerOptions our impl takes from vLLM's Attention layer for each layer setting of the tests. A few
KB of integers: the replay (tests/test_vllm_replay.py) makes the data from seeds."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from test_vllm_backend import (MASKS, attention_layer, build_metadata, common_metadata,  # noqa: E402
                               cpu_vllm_config, vllm_kv_cache)
from test_vllm_replay import REPLAY_FILE  # noqa: E402
from vllm.config import set_current_vllm_config  # noqa: E402
from vllm.v1.kv_cache_interface import KVCacheLayout  # noqa: E402
from vllm_batches import STEPS, batch_tensors  # noqa: E402

SEEDS = {"mixed": 1, "mixed_replay": 3}
LAYOUTS = {"LBNHC": (KVCacheLayout.LBNHC, 1), "LBHNC": (KVCacheLayout.LBHNC, 1), "BLHNC": (KVCacheLayout.BLHNC, 2)}


def main() -> None:
    config = cpu_vllm_config()
    replay = {}
    with set_current_vllm_config(config):
        for name, step in STEPS.items():
            batch = batch_tensors(step, SEEDS[name])
            metadata = build_metadata(config, common_metadata(step, batch))
            replay[name] = dict(seed=SEEDS[name], metadata=asdict(metadata), slot_mapping=batch["slot_mapping"])
        replay["layouts"] = {name: dict(shape=list(view.shape), stride=list(view.stride()))
                             for name, (layout, layers) in LAYOUTS.items()
                             for view in [vllm_kv_cache(torch.bfloat16, layout, layers)]}
        replay["options"] = {}
        for name, mask in MASKS.items():
            config.compilation_config.static_forward_context.clear()  # one layer name, built once per setting
            replay["options"][name] = asdict(attention_layer(config, mask).impl.options)
    torch.save(replay, REPLAY_FILE)
    print(f"wrote {REPLAY_FILE} ({REPLAY_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
