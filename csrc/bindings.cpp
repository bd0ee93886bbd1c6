// The attn ops: schemas in one place, one implementation per backend.
// Fake (meta) kernels for torch.compile live in torch_attn/_fake.py.
#include <torch/library.h>
#include "prefill.h"

TORCH_LIBRARY(attn, m) {
  m.def(
      "prefill(Tensor q, Tensor k, Tensor v, Tensor? qo_indptr=None, Tensor? kv_indptr=None, *, "
      "bool causal=False, float? sm_scale=None, int window_left=-1, int chunk_size=0, "
      "float logits_soft_cap=0.0, Tensor? sinks=None, "
      "Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, ScalarType? out_dtype=None) -> (Tensor out, "
      "Tensor lse)");
  m.def(
      "prefill_paged(Tensor q, Tensor k_cache, Tensor v_cache, Tensor qo_indptr, Tensor block_table, Tensor kv_lens, "
      "*, str kv_layout=\"NHD\", bool causal=False, float? sm_scale=None, int window_left=-1, "
      "int chunk_size=0, float logits_soft_cap=0.0, Tensor? sinks=None, "
      "Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, ScalarType? out_dtype=None) -> (Tensor out, "
      "Tensor lse)");
  // q_scale, k_scale, v_scale: descale factors of fp8 inputs; out_dtype: the output dtype of fp8 q.
  // The out= forms: the same results written into the caller's buffers (lse optional), for engines that hand
  // the backend its output; they return nothing, so that torch.compile functionalizes them as any mutating op.
  m.def(
      "prefill.out(Tensor q, Tensor k, Tensor v, Tensor? qo_indptr=None, Tensor? kv_indptr=None, *, "
      "bool causal=False, float? sm_scale=None, int window_left=-1, int chunk_size=0, "
      "float logits_soft_cap=0.0, Tensor? sinks=None, "
      "Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, ScalarType? out_dtype=None, Tensor(a!) out, "
      "Tensor(b!)? lse=None) -> ()");
  m.def(
      "prefill_paged.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor qo_indptr, Tensor block_table, "
      "Tensor kv_lens, *, str kv_layout=\"NHD\", bool causal=False, float? sm_scale=None, int window_left=-1, "
      "int chunk_size=0, float logits_soft_cap=0.0, Tensor? sinks=None, "
      "Tensor? q_scale=None, Tensor? k_scale=None, Tensor? v_scale=None, ScalarType? out_dtype=None, Tensor(a!) out, "
      "Tensor(b!)? lse=None) -> ()");
  m.def("merge_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor out, Tensor lse)");
}

TORCH_LIBRARY_IMPL(attn, CPU, m) {
  m.impl("prefill", &torch_attn::prefill_cpu);
  m.impl("prefill_paged", &torch_attn::prefill_paged_cpu);
  m.impl("prefill.out", &torch_attn::prefill_out_cpu);
  m.impl("prefill_paged.out", &torch_attn::prefill_paged_out_cpu);
  m.impl("merge_states", &torch_attn::merge_states);
}

TORCH_LIBRARY_IMPL(attn, CUDA, m) {
  m.impl("prefill", &torch_attn::prefill_cuda);
  m.impl("prefill_paged", &torch_attn::prefill_paged_cuda);
  m.impl("prefill.out", &torch_attn::prefill_out_cuda);
  m.impl("prefill_paged.out", &torch_attn::prefill_paged_out_cuda);
  m.impl("merge_states", &torch_attn::merge_states);  // ATen ops: runs on any device
}
