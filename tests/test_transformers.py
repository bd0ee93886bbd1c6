"""The transformers plug-in's parts: registration, padding and chunks as ragged segments, refused
keywords, packed sequences (CPU, CI). Whole models against eager: tests/test_model_zoo.py."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
import torch_attn.integrations.transformers as integration  # noqa: E402


def test_registered_with_transformers():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionInterface._global_mapping[integration.NAME] is integration.attention_forward
    assert AttentionMaskInterface._global_mapping[integration.NAME] is integration.padding_mask


def test_ragged_segments_from_padding():
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    qo, kv = integration.ragged_segments(padding, q_length=2)  # the last 2 key positions are queries
    assert kv.tolist() == [0, 2, 5, 5, 5, 10, 10, 10, 10, 15]  # an all-padding row: one padding segment
    assert qo.tolist() == [0, 0, 2, 2, 2, 4, 4, 4, 4, 6]


def test_ragged_segments_cut_at_a_chunk_end():
    """The valid tokens of each row in two segments, cut where the row's first chunk ends (clamped into
    them): chunks of 8, row 0's first real key at position 5 + 2 (cut after 1 key), row 1's at 1 (the cut,
    7 keys on, lies past its 5 tokens)."""
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    qo, kv = integration.ragged_segments(padding, q_length=3, chunk_size=8, key_positions=torch.tensor([5, 1]))
    assert kv.tolist() == [0, 2, 3, 5, 5, 5, 10, 10, 10]
    assert qo.tolist() == [0, 0, 1, 3, 3, 3, 6, 6, 6]


def test_unknown_keywords_are_refused_not_ignored():
    module = torch.nn.Module()
    module.is_causal = True
    q = torch.randn(1, 4, 5, 16)
    out, _ = integration.attention_forward(module, q, q, q, None, position_ids=torch.arange(5)[None],
                                           output_attentions=False)
    assert out.shape == (1, 5, 4, 16)
    with pytest.raises(ValueError, match="'alibi_slopes' is not one torch_attn knows"):
        integration.attention_forward(module, q, q, q, None, alibi_slopes=torch.ones(4))
    with pytest.raises(ValueError, match="'position_bias': an additive position bias"):
        integration.attention_forward(module, q, q, q, None, position_bias=torch.zeros(1, 4, 5, 5))


def test_packed_sequences_through_cu_seq_lens():
    """FlashAttention's packed format: one row holding sequences of 3 and 6 tokens."""
    module = torch.nn.Module()
    module.is_causal = True
    q, k, v = (torch.randn(1, 4, 9, 16) for _ in range(3))
    cu = torch.tensor([0, 3, 9])
    out, _ = integration.attention_forward(module, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                           max_length_q=6, max_length_k=6)
    for a, b in ((0, 3), (3, 9)):
        want, _ = integration.attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None)
        torch.testing.assert_close(out[:, a:b], want)
