// The attn ops: schemas in one place, one implementation per backend.
// Fake (meta) kernels for torch.compile live in torch_attn/_fake.py.
#include <torch/library.h>
#include "prefill.h"

TORCH_LIBRARY(attn, m) {
  m.def(
      "prefill(Tensor q, Tensor k, Tensor v, Tensor? qo_indptr=None, Tensor? kv_indptr=None, *, "
      "bool causal=False, float? sm_scale=None, int window_left=-1, float logits_soft_cap=0.0) "
      "-> (Tensor out, Tensor lse)");
}

TORCH_LIBRARY_IMPL(attn, CPU, m) { m.impl("prefill", &torch_attn::prefill_cpu); }

TORCH_LIBRARY_IMPL(attn, CUDA, m) { m.impl("prefill", &torch_attn::prefill_cuda); }
