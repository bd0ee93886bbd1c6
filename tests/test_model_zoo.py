"""The model zoo: tiny random models built from transformers configs, attn_implementation="torch_attn"
against "eager" (transformers' own implementation of every pattern: sinks, chunks, MLA, soft caps):
logits of an unpadded and a left-padded batch, and a short greedy generate() with a KV cache. CPU in CI
(float32); GPU marked (bf16: ours must be about as close to eager in float32 as eager in bf16 is).
Every config object is fresh: from_config records the implementation in the config it is given."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
import torch_attn.integrations.transformers as integration  # noqa: E402
from conftest import HAS_GPU  # noqa: E402

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU")])]
DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=256)



def gemma4_config(global_head_dim):
    return transformers.Gemma4TextConfig(**{**SMALL, "num_hidden_layers": 6}, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=32, global_head_dim=global_head_dim,
                                         sliding_window=6, hidden_size_per_layer_input=16,
                                         vocab_size_per_layer_input=128)


# name -> config factory; what each exercises is in its comment.
ZOO = {
    # MHA, head dim 16
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=4),
    # GQA 4/2, q/k norms
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    # GQA with MoE blocks
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2,
                                                     head_dim=16, moe_intermediate_size=32, num_experts=4,
                                                     num_experts_per_tok=2),
    # GQA 8/2, a sliding window shorter than the prompts (a sliding cache during generate)
    "mistral": lambda: transformers.MistralConfig(**SMALL, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                                  sliding_window=7),
    # logit soft cap, query_pre_attn_scalar scaling, alternating sliding layers
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                                sliding_window=6, attn_logit_softcapping=20.0,
                                                query_pre_attn_scalar=24),
    # 5:1 sliding / global layers, q/k norms
    "gemma3": lambda: transformers.Gemma3TextConfig(**{**SMALL, "num_hidden_layers": 6}, num_attention_heads=4,
                                                    num_key_value_heads=2, head_dim=32, sliding_window=6,
                                                    query_pre_attn_scalar=32),
    # Gemma 4's layout (sliding layers, global layers with their own head dim) at a global head dim of 64;
    # the real models' 512: test_gemma4_global_head_dim_512
    "gemma4": lambda: gemma4_config(global_head_dim=64),
    # attention sinks (s_aux), alternating sliding layers, MoE
    "gpt_oss": lambda: transformers.GptOssConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                 num_local_experts=4, num_experts_per_tok=2, sliding_window=8),
    # MLA: q/k head dim 24 (16 + rope 8), v head dim 16
    "deepseek_v3": lambda: transformers.DeepseekV3Config(**SMALL, moe_intermediate_size=32, num_attention_heads=4,
                                                         num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32,
                                                         qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                                                         n_routed_experts=4, num_experts_per_tok=2,
                                                         first_k_dense_replace=1, n_group=1, topk_group=1),
    # chunked local attention layers (chunks of 8 < the prompts: a chunked cache during generate)
    "llama4": lambda: transformers.Llama4TextConfig(**{**SMALL, "num_hidden_layers": 4}, intermediate_size_mlp=128,
                                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                    attention_chunk_size=8, num_local_experts=2),
}

def model_pair(name, device):
    torch.manual_seed(0)
    ours = transformers.AutoModelForCausalLM.from_config(ZOO[name](), attn_implementation=integration.NAME)
    ref = transformers.AutoModelForCausalLM.from_config(ZOO[name](), attn_implementation="eager")
    assert ours.config._attn_implementation == integration.NAME and ref.config._attn_implementation == "eager"
    with torch.no_grad():
        for module in ours.modules():  # sinks far from zero, so that they matter (gpt-oss)
            if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
                module.sinks.normal_(0.0, 2.0)
    ref.load_state_dict(ours.state_dict())
    return [m.to(device=device, dtype=DTYPE[device]).eval() for m in (ours, ref)]


def batch(device, padded):
    """Two prompts of 19 tokens; padded: the second one 11 tokens, left-padded."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (2, 19), generator=gen)
    mask = torch.ones(2, 19, dtype=torch.long)
    if padded:
        mask[1, :8] = 0
    return ids.to(device), mask.to(device)


def counting_attention(monkeypatch):
    from transformers import AttentionInterface

    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        return integration.attention_forward(*args, **kwargs)
    monkeypatch.setitem(AttentionInterface._global_mapping, integration.NAME, forward)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", list(ZOO))
def test_logits_match_eager(name, padded, device, monkeypatch):
    calls = counting_attention(monkeypatch)
    ours, ref = model_pair(name, device)
    ids, mask = batch(device, padded)
    assert_logits_match(ours, ref, ids, mask, device)
    assert len(calls) == ours.config.num_hidden_layers  # every layer ran through torch_attn


def assert_logits_match(ours, ref, ids, mask, device):
    """CPU (float32): within 2e-4 of eager. CUDA (bf16): no farther from float32 eager than eager bf16 is."""
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits.float()
        want = ref(input_ids=ids, attention_mask=mask).logits.float()
    real = mask.bool()  # padded positions' logits are meaningless for every backend
    assert torch.isfinite(got[real]).all()
    err = (got[real] - want[real]).abs().max().item()
    if device == "cpu":
        assert err < 2e-4, f"max |logits - eager| = {err:.2e}"
        return
    with torch.no_grad():  # (bf16 -> float32 -> bf16 leaves the weights as they were)
        truth = ref.float()(input_ids=ids, attention_mask=mask).logits
    ref.to(DTYPE[device])
    ours_err = (got[real] - truth[real]).abs().max().item()
    eager_err = (want[real] - truth[real]).abs().max().item()
    assert ours_err <= 1.1 * eager_err + 1e-2, f"ours {ours_err:.2e}, eager bf16 {eager_err:.2e} from fp32"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ZOO))
def test_generate_matches_eager(name, device):
    """Greedy decoding with a KV cache (Skv > Sq, bottom-right causal; sliding and chunked caches that
    drop keys) over a left-padded batch. In float32 (CPU) the tokens equal eager's. In bf16 a tiny
    random model's top logits lie within rounding of each other, so there each token ours picks must
    be a top choice of eager in float32 on the same sequence, within twice eager bf16's own error."""
    ours, ref = model_pair(name, device)
    ids, mask = batch(device, padded=True)
    new_tokens = 6
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        got = ours.generate(ids, **kwargs)
        if device == "cpu":
            assert torch.equal(got, ref.generate(ids, **kwargs))
            return
        full_mask = torch.cat([mask, torch.ones_like(got[:, ids.shape[1]:])], dim=1)
        lowp = ref(input_ids=got, attention_mask=full_mask).logits.float()
        truth = ref.float()(input_ids=got, attention_mask=full_mask).logits
    steps = slice(ids.shape[1] - 1, got.shape[1] - 1)  # the logits that chose each new token
    chosen = truth[:, steps].gather(-1, got[:, ids.shape[1]:, None]).squeeze(-1)
    gap = (truth[:, steps].max(-1).values - chosen).max().item()
    noise = (lowp[:, steps] - truth[:, steps]).abs().max().item()
    assert gap <= 2 * noise + 1e-2, f"a token {gap:.3e} below float32's best; eager bf16 is {noise:.3e} off"


@pytest.mark.head_dims(512)
@pytest.mark.parametrize("device", DEVICES)
def test_gemma4_global_head_dim_512(device, monkeypatch):
    """Gemma 4's global layers use head dim 512 (the mma.sync kernel's widest tile on CUDA): logits match eager."""
    monkeypatch.setitem(ZOO, "gemma4_512", lambda: gemma4_config(global_head_dim=512))
    ours, ref = model_pair("gemma4_512", device)
    ids, mask = batch(device, padded=True)
    assert_logits_match(ours, ref, ids, mask, device)
