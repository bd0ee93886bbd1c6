"""A small randomly initialised Llama generating through torch_attn (no download).

    python examples/hf_generate.py      # needs: pip install transformers
"""
import torch
import transformers

import torch_attn.integrations.transformers  # noqa: F401  (registers attn_implementation="torch_attn")

device = "cuda" if torch.cuda.is_available() else "cpu"
config = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2)
model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="torch_attn").to(device).eval()
prompts = torch.randint(1, 1000, (2, 12), device=device)
mask = torch.ones_like(prompts)
mask[1, :5] = 0  # the second prompt is left-padded
with torch.no_grad():
    tokens = model.generate(prompts, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
print(tokens[:, 12:])
