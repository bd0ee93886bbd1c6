// attn::merge_states: the attention of queries over the union of two disjoint key
// sets, from the two partial results. With natural-log LSEs a and b and m = max(a, b):
//     out = (e^(a-m) out_a + e^(b-m) out_b) / (e^(a-m) + e^(b-m)),   lse = m + log(e^(a-m) + e^(b-m))
// A part that saw no key has lse = -inf and weight 0; when both did, out = 0 and
// lse = -inf (m is replaced by 0 there, so no -inf - -inf). Device-generic ATen ops:
// no host sync, fine in CUDA graphs.
#include <ATen/ATen.h>
#include <limits>
#include "prefill.h"

namespace torch_attn {

PrefillResult merge_states(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
                           const at::Tensor& lse_b) {
  TORCH_CHECK_VALUE(out_a.dim() >= 2, "attn.merge_states: out_a must be [..., heads, head_dim], got ", out_a.dim(),
                    "-D");
  TORCH_CHECK_VALUE(out_b.sizes() == out_a.sizes(), "attn.merge_states: out_b must have out_a's shape ", out_a.sizes(),
                    ", got ", out_b.sizes());
  TORCH_CHECK_TYPE(out_a.is_floating_point() && out_b.scalar_type() == out_a.scalar_type(),
                   "attn.merge_states: out_a and out_b must share one floating dtype, got ",
                   dtype_name(out_a.scalar_type()), " and ", dtype_name(out_b.scalar_type()));
  const auto lse_shape = out_a.sizes().slice(0, out_a.dim() - 1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"lse_a", lse_a}, {"lse_b", lse_b}}) {
    TORCH_CHECK_VALUE(t.sizes() == lse_shape, "attn.merge_states: ", name, " must be out's shape without head_dim ",
                      lse_shape, ", got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "attn.merge_states: ", name, " must be float32, got ",
                     dtype_name(t.scalar_type()));
  }
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"lse_a", lse_a}, {"out_b", out_b}, {"lse_b", lse_b}}) {
    TORCH_CHECK_VALUE(t.device() == out_a.device(), "attn.merge_states: ", name, " must be on out_a's device (",
                      out_a.device(), "), got ", t.device());
  }
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const at::Tensor m = at::maximum(lse_a, lse_b);
  const at::Tensor m_safe = at::where(m == kNegInf, at::zeros_like(m), m);
  const at::Tensor weight_a = at::exp(lse_a - m_safe), weight_b = at::exp(lse_b - m_safe);
  const at::Tensor total = weight_a + weight_b;
  // where(), not a product, for weight 0: an empty part's out must not matter even if it is not 0.
  const at::Tensor part_a = at::where(weight_a.unsqueeze(-1) > 0, out_a.to(at::kFloat) * weight_a.unsqueeze(-1), 0.0);
  const at::Tensor part_b = at::where(weight_b.unsqueeze(-1) > 0, out_b.to(at::kFloat) * weight_b.unsqueeze(-1), 0.0);
  const at::Tensor saw_keys = total > 0;
  const at::Tensor out = at::where(
      saw_keys.unsqueeze(-1), (part_a + part_b) / at::where(saw_keys, total, at::ones_like(total)).unsqueeze(-1), 0.0);
  const at::Tensor lse = at::where(saw_keys, m_safe + at::log(total), at::full_like(total, kNegInf));
  return {out.to(out_a.scalar_type()), lse};
}

}  // namespace torch_attn
