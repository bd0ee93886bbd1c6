// The prefill op's host side: argument checks shared by every backend, and the
// backend implementations registered in bindings.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <string>
#include <tuple>

namespace torch_attn {

/// What the checks learn from the arguments' shapes (never from device data).
struct PrefillShape {
  bool ragged;       // q is [total_q, Hq, D] with indptrs
  int64_t num_seqs;  // batch size
  int64_t qo_len;    // dense: per sequence; ragged: total rows of q
  int64_t kv_len;    // dense: per sequence; ragged: total rows of k / v
  int64_t num_qo_heads;
  int64_t num_kv_heads;
  int64_t head_dim_qk;       // of q and k
  int64_t head_dim_v;        // of v and out (MLA: differs from head_dim_qk)
  double sm_scale;           // the default 1/sqrt(head_dim_qk) already applied
  at::ScalarType out_dtype;  // q's, or for fp8 q out_dtype's (bf16 by default)
};

/// The fp8 arguments every attention op takes: the descale factors of fp8 q, k and v (the real
/// value is code * scale; float32, [] or [1] per tensor, [heads] per head) and the output dtype
/// of fp8 q. Each scale only with an fp8 input (fp8_checks.cpp).
struct QuantArgs {
  const c10::optional<at::Tensor>& q_scale;
  const c10::optional<at::Tensor>& k_scale;
  const c10::optional<at::Tensor>& v_scale;
  c10::optional<at::ScalarType> out_dtype;
};

/// The checked scales as the backends read them: float32, contiguous; undefined where absent (1).
struct Descales {
  at::Tensor q, k, v;
};

bool is_fp8(at::ScalarType type);

/// q's, k's and v's dtypes together (`k_name`, `v_name`: their argument names): q float16,
/// bfloat16, float32 or fp8; k and v q's dtype or an fp8 type (an fp8 KV cache), one dtype; fp8 q
/// only with fp8 k and v. Returns the output dtype.
at::ScalarType check_dtypes(const char* op, const at::Tensor& q, const char* k_name, const at::Tensor& k,
                            const char* v_name, const at::Tensor& v, c10::optional<at::ScalarType> out_dtype);

/// The descale factors' types, shapes and devices against q, k (`k_name`) and v.
void check_scales(const char* op, const QuantArgs& quant, const at::Tensor& q, const char* k_name, const at::Tensor& k,
                  const char* v_name, const at::Tensor& v, int64_t num_qo_heads, int64_t num_kv_heads);

/// The checked scales; with `check_values` (the CPU path, where reading them costs no sync) also
/// their values: positive and finite, else a ValueError naming the scale.
Descales checked_descales(const char* op, const QuantArgs& quant, bool check_values);

/// Validates the arguments of attn::prefill; throws a c10::Error (a Python
/// ValueError / TypeError) naming the argument and what was expected.
PrefillShape check_prefill_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                                c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                double logits_soft_cap, const QuantArgs& quant);

using PrefillResult = std::tuple<at::Tensor, at::Tensor>;

PrefillResult prefill_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                          bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                          double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                          const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                          const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype);

/// The CUDA implementation, or, in a build without CUDA kernels, a stub that
/// raises an error saying so.
PrefillResult prefill_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                           bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                           double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                           const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                           const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype);

/// What the checks of attn::prefill_paged learn: the shape fields as above (num_seqs,
/// qo_len = total query rows) plus the cache geometry.
struct PagedShape {
  PrefillShape common;
  bool hnd;  // kv_layout "HND": [pages, heads, page_size, D]; else "NHD": [pages, page_size, heads, D]
  int64_t num_pages;
  int64_t page_size;
  int64_t max_pages;  // block_table columns
};

PagedShape check_prefill_paged_args(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                    const at::Tensor& qo_indptr, const at::Tensor& block_table,
                                    const at::Tensor& kv_lens, c10::string_view kv_layout,
                                    c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                    double logits_soft_cap, const QuantArgs& quant);

PrefillResult prefill_paged_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                                c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                                int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                                const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                                c10::optional<at::ScalarType> out_dtype);

PrefillResult prefill_paged_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                                 c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                                 int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                 const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                                 const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                                 c10::optional<at::ScalarType> out_dtype);

/// The out= overloads (attn::prefill.out, attn::prefill_paged.out): the same results written into the
/// caller's out (a view with any row strides) and, if given, lse. The CUDA ones allocate nothing.
void prefill_out_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                     bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                     double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                     const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                     const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                     const at::Tensor& out, const c10::optional<at::Tensor>& lse);
void prefill_out_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                      bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                      double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                      const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                      const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                      const at::Tensor& out, const c10::optional<at::Tensor>& lse);
void prefill_paged_out_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                           c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale, int64_t window_left,
                           int64_t chunk_size, double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                           const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                           const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                           const at::Tensor& out, const c10::optional<at::Tensor>& lse);
void prefill_paged_out_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                            c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                            int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                            const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                            const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                            c10::optional<at::ScalarType> out_dtype, const at::Tensor& out,
                            const c10::optional<at::Tensor>& lse);

/// attn::merge_states: combines two partial attention results over disjoint key sets
/// (any device; ATen ops, no host sync).
PrefillResult merge_states(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
                           const at::Tensor& lse_b);

/// Checks the optional per-head sink logits (attention sinks): [num_qo_heads], a float dtype, q's
/// device. Returns them as float32 (the kernels' type), or an undefined tensor without sinks.
at::Tensor checked_sinks(const char* op, const c10::optional<at::Tensor>& sinks, const at::Tensor& q,
                         int64_t num_qo_heads);

/// A dtype as Python spells it ("torch.bfloat16"), for error messages.
std::string dtype_name(at::ScalarType type);

/// The checks of the out= overloads: every check of the functional op, then out and lse against what the op
/// writes: out [q's shape with v's head_dim] in q's dtype, lse (optional) [q's shape without head_dim]
/// float32, on q's device, out's last dim contiguous, sharing memory neither with each other, nor
/// within themselves, nor with the call's inputs.
PrefillShape check_prefill_out_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const c10::optional<at::Tensor>& qo_indptr,
                                    const c10::optional<at::Tensor>& kv_indptr, c10::optional<double> sm_scale,
                                    int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                    const QuantArgs& quant, const c10::optional<at::Tensor>& sinks,
                                    const at::Tensor& out, const c10::optional<at::Tensor>& lse);
PagedShape check_prefill_paged_out_args(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                        const at::Tensor& qo_indptr, const at::Tensor& block_table,
                                        const at::Tensor& kv_lens, c10::string_view kv_layout,
                                        c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                        double logits_soft_cap, const QuantArgs& quant,
                                        const c10::optional<at::Tensor>& sinks, const at::Tensor& out,
                                        const c10::optional<at::Tensor>& lse);

/// An lse buffer for q: float32, q's shape without head_dim.
at::Tensor allocate_lse(const at::Tensor& q);

/// Output buffers of the op: out has q's shape with v's head dim (contiguous) in the output dtype,
/// lse q's shape without head_dim, float32.
PrefillResult allocate_prefill_outputs(const at::Tensor& q, const PrefillShape& shape);

}  // namespace torch_attn
