"""The three input layouts of torch_attn.prefill, on the best device available.

    python examples/prefill_layouts.py
"""
import torch

import torch_attn

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16
heads, kv_heads, head_dim = 32, 8, 128  # GQA, Llama-3-8B shaped

# One sequence: q [Sq, Hq, D], k/v [Skv, Hkv, D]. Skv > Sq: the queries are the last Sq positions.
q = torch.randn(300, heads, head_dim, device=device, dtype=dtype)
k = torch.randn(1000, kv_heads, head_dim, device=device, dtype=dtype)
v = torch.randn(1000, kv_heads, head_dim, device=device, dtype=dtype)
out, lse = torch_attn.prefill(q, k, v, causal=True, return_lse=True)
print("single sequence:", tuple(out.shape), "lse", tuple(lse.shape))

# A dense batch: [B, S, H, D]; q, k, v may be slices of one fused projection output.
qkv = torch.randn(4, 512, heads + 2 * kv_heads, head_dim, device=device, dtype=dtype)
q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=2)
out = torch_attn.prefill(q, k, v, causal=True, window_left=255)  # sliding window of 256 keys
print("dense batch with a sliding window:", tuple(out.shape))

# A ragged batch: sequences packed along the token axis, cu_seqlens-style int32 indptrs.
lengths = [17, 0, 640, 129]
qo_indptr = torch.tensor([0, 17, 17, 657, 786], dtype=torch.int32, device=device)
q = torch.randn(786, heads, head_dim, device=device, dtype=dtype)
k = torch.randn(786, kv_heads, head_dim, device=device, dtype=dtype)
v = torch.randn(786, kv_heads, head_dim, device=device, dtype=dtype)
out = torch_attn.prefill(q, k, v, causal=True, qo_indptr=qo_indptr, kv_indptr=qo_indptr, logits_soft_cap=50.0)
print("ragged batch of", len(lengths), "sequences with a logit soft cap:", tuple(out.shape))
