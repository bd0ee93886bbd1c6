"""Small randomly initialised transformers models with attn_implementation="torch_attn"
against the same weights on "sdpa": logits and generated tokens (CPU in CI, GPU marked)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
import torch_attn.integrations.transformers as integration  # noqa: E402
from conftest import HAS_GPU  # noqa: E402

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
# fp32 on CPU (the CPU path computes in fp32); bf16 on GPU against SDPA in bf16.
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}
LOGIT_TOL = {"cpu": 2e-4, "cuda": 5e-2}


def llama_config():
    return transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)


def mistral_config():  # GQA 8/2 with a sliding window shorter than the prompts
    return transformers.MistralConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=16, sliding_window=7,
                                      max_position_embeddings=256)


def gemma2_config():  # logit soft cap, query_pre_attn_scalar scaling, alternating sliding layers
    return transformers.Gemma2Config(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=6,
                                     attn_logit_softcapping=20.0, query_pre_attn_scalar=24,
                                     max_position_embeddings=256)


CONFIGS = {"llama": llama_config, "mistral": mistral_config, "gemma2": gemma2_config}


def model_pair(name, device):
    torch.manual_seed(0)
    # One config object each: from_config records the implementation in the config it is given.
    ours = transformers.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation=integration.NAME)
    ref = transformers.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation="sdpa")
    assert ours.config._attn_implementation == integration.NAME and ref.config._attn_implementation == "sdpa"
    ref.load_state_dict(ours.state_dict())
    return [m.to(device=device, dtype=DTYPE[device]).eval() for m in (ours, ref)]


def padded_batch(device, side):
    """Two prompts of 19 and 11 tokens, padded on `side`."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (2, 19), generator=gen)
    mask = torch.ones(2, 19, dtype=torch.long)
    if side == "left":
        mask[1, :8] = 0
    else:
        mask[1, 11:] = 0
    return ids.to(device), mask.to(device)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_sdpa(name, side, device, monkeypatch):
    from transformers import AttentionInterface

    calls = []
    def counting_forward(*args, **kwargs):
        calls.append(1)
        return integration.attention_forward(*args, **kwargs)
    monkeypatch.setitem(AttentionInterface._global_mapping, integration.NAME, counting_forward)
    ours, ref = model_pair(name, device)
    ids, mask = padded_batch(device, side)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits.float()
    assert len(calls) == ours.config.num_hidden_layers  # every layer ran through torch_attn
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits.float()
    real = mask.bool()  # padded positions' logits are meaningless for every backend
    assert torch.isfinite(got[real]).all()
    err = (got[real] - want[real]).abs().max().item()
    assert err < LOGIT_TOL[device], f"max |logits - sdpa| = {err:.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_generate_same_tokens(name, device):
    """Greedy decoding with a KV cache (Skv > Sq, bottom-right causal) over a left-padded batch."""
    ours, ref = model_pair(name, device)
    ids, mask = padded_batch(device, "left")
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        got = ours.generate(ids, **kwargs)
        want = ref.generate(ids, **kwargs)
    assert torch.equal(got, want)


def gpt_oss_config():  # attention sinks (s_aux), alternating sliding layers, MoE
    return transformers.GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                     num_experts_per_tok=2, sliding_window=8, max_position_embeddings=256)


def deepseek_v3_config():  # MLA: q/k head dim 24 (16 + rope 8), v head dim 16
    return transformers.DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=64,
                                         moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                                         qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                                         first_k_dense_replace=1, n_group=1, topk_group=1, max_position_embeddings=256)


def llama4_config():  # chunked local attention layers (attention_chunk_size)
    return transformers.Llama4TextConfig(vocab_size=128, hidden_size=64, intermediate_size=64,
                                         intermediate_size_mlp=128, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16, attention_chunk_size=8,
                                         num_local_experts=2, max_position_embeddings=256)


REFUSED = {"deepseek_v3": (deepseek_v3_config, "head_dim_v"),
           "llama4": (llama4_config, "chunked_overlay")}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refuses_models_whose_math_it_would_change(name):
    """Models whose attention needs what torch_attn does not implement yet get a clear
    error naming it, never logits that silently differ from eager."""
    make_config, what = REFUSED[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_config(), attn_implementation=integration.NAME).eval()
    ids = torch.randint(1, 128, (1, 19))
    with torch.no_grad(), pytest.raises(ValueError, match=f"torch_attn attention: '{what}'"):
        model(input_ids=ids)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_gpt_oss_sinks_match_eager(side, device):
    """gpt-oss passes its per-head sink logits as s_aux: they reach the op as sinks (eager is the
    reference: it is transformers' own implementation of sinks). Eager takes gpt-oss's softmax in
    the model's dtype, so on the GPU (bf16) the yardstick is eager in float32, and ours must be at
    least as close to it as eager in bf16 is (FlashAttention's rule, on the logits)."""
    torch.manual_seed(0)
    ours = transformers.AutoModelForCausalLM.from_config(gpt_oss_config(), attn_implementation=integration.NAME)
    ref = transformers.AutoModelForCausalLM.from_config(gpt_oss_config(), attn_implementation="eager")
    with torch.no_grad():
        for layer in ours.model.layers:  # sinks far from zero, so that they matter
            layer.self_attn.sinks.normal_(0.0, 2.0)
    ref.load_state_dict(ours.state_dict())
    ours, ref = [m.to(device=device, dtype=DTYPE[device]).eval() for m in (ours, ref)]
    ids, mask = padded_batch(device, side)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits.float()
        want = ref(input_ids=ids, attention_mask=mask).logits.float()
    real = mask.bool()
    err = (got[real] - want[real]).abs().max().item()
    if device == "cpu":
        assert err < LOGIT_TOL[device], f"max |logits - eager| = {err:.2e}"
    else:
        with torch.no_grad():  # (bf16 -> float32 -> bf16 leaves the weights as they were)
            truth = ref.float()(input_ids=ids, attention_mask=mask).logits
        ref.to(DTYPE[device])
        ours_err = (got[real] - truth[real]).abs().max().item()
        eager_err = (want[real] - truth[real]).abs().max().item()
        assert ours_err <= 1.1 * eager_err + 1e-2, f"ours {ours_err:.2e}, eager bf16 {eager_err:.2e} from fp32"
    if side == "left":
        kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            assert torch.equal(ours.generate(ids, **kwargs), ref.generate(ids, **kwargs))
