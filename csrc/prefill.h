// The prefill op's host side: argument checks shared by every backend, and the
// backend implementations registered in bindings.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <tuple>

namespace torch_attn {

/// What the checks learn from the arguments' shapes (never from device data).
struct PrefillShape {
  bool ragged;         // q is [total_q, Hq, D] with indptrs
  int64_t num_seqs;    // batch size
  int64_t qo_len;      // dense: per sequence; ragged: total rows of q
  int64_t kv_len;      // dense: per sequence; ragged: total rows of k / v
  int64_t num_qo_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  double sm_scale;     // the default 1/sqrt(D) already applied
};

/// Validates the arguments of attn::prefill; throws a c10::Error (a Python
/// ValueError / TypeError) naming the argument and what was expected.
PrefillShape check_prefill_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                                c10::optional<double> sm_scale, int64_t window_left, double logits_soft_cap);

using PrefillResult = std::tuple<at::Tensor, at::Tensor>;

PrefillResult prefill_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                          bool causal, c10::optional<double> sm_scale, int64_t window_left, double logits_soft_cap);

/// The CUDA implementation, or, in a build without CUDA kernels, a stub that
/// raises an error saying so.
PrefillResult prefill_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                           bool causal, c10::optional<double> sm_scale, int64_t window_left, double logits_soft_cap);

/// Output buffers of the op: out has q's shape (contiguous), lse q's shape without head_dim, float32.
PrefillResult allocate_prefill_outputs(const at::Tensor& q);

}  // namespace torch_attn
