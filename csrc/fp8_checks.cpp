// Argument checks of fp8 inputs, shared by every backend: which dtypes combine, the output dtype,
// and the descale factors. torch_attn/_fake.py mirrors them with the same messages.
#include <ATen/core/Tensor.h>
#include <ATen/ops/all.h>
#include <ATen/ops/isfinite.h>
#include <c10/util/Exception.h>
#include "prefill.h"

namespace torch_attn {

bool is_fp8(at::ScalarType type) { return type == at::kFloat8_e4m3fn || type == at::kFloat8_e5m2; }

at::ScalarType check_dtypes(const char* op, const at::Tensor& q, const char* k_name, const at::Tensor& k,
                            const char* v_name, const at::Tensor& v, c10::optional<at::ScalarType> out_dtype) {
  const auto dtype = q.scalar_type();
  const bool fp8_q = is_fp8(dtype);
  TORCH_CHECK_TYPE(fp8_q || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat, op,
                   ": q must be float16, bfloat16, float32, float8_e4m3fn or float8_e5m2, got ", dtype_name(dtype));
  const auto kv_dtype = k.scalar_type();
  if (fp8_q) {
    TORCH_CHECK_TYPE(is_fp8(kv_dtype), op, ": ", k_name,
                     " must be float8_e4m3fn or float8_e5m2 like q (fp8 q "
                     "takes fp8 keys and values), got ",
                     dtype_name(kv_dtype));
  } else {
    TORCH_CHECK_TYPE(kv_dtype == dtype || is_fp8(kv_dtype), op, ": ", k_name, " must have q's dtype (",
                     dtype_name(dtype), ") or be float8_e4m3fn or float8_e5m2 (an fp8 KV cache), got ",
                     dtype_name(kv_dtype));
  }
  TORCH_CHECK_TYPE(v.scalar_type() == kv_dtype, op, ": ", v_name, " must have ", k_name, "'s dtype (",
                   dtype_name(kv_dtype), "), got ", dtype_name(v.scalar_type()));
  if (!fp8_q) {
    TORCH_CHECK_TYPE(!out_dtype.has_value() || *out_dtype == dtype, op, ": out_dtype must be None or q's dtype (",
                     dtype_name(dtype), "): it chooses the output of fp8 q only, got ", dtype_name(*out_dtype));
    return dtype;
  }
  const auto out = out_dtype.value_or(at::kBFloat16);
  TORCH_CHECK_TYPE(out == at::kBFloat16 || out == at::kHalf, op,
                   ": out_dtype must be torch.bfloat16 or torch.float16 for fp8 q, got ", dtype_name(out));
  return out;
}

namespace {

void check_scale(const char* op, const char* name, const c10::optional<at::Tensor>& scale, const char* input_name,
                 const at::Tensor& input, int64_t heads, const at::Tensor& q) {
  if (!scale.has_value()) return;
  const at::Tensor& s = *scale;
  TORCH_CHECK_VALUE(is_fp8(input.scalar_type()), op, ": ", name, " descales fp8 ", input_name, ", but ", input_name,
                    " is ", dtype_name(input.scalar_type()), " (pass None)");
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   dtype_name(s.scalar_type()));
  TORCH_CHECK_VALUE(s.dim() == 0 || (s.dim() == 1 && (s.size(0) == 1 || s.size(0) == heads)), op, ": ", name,
                    " must be [] or [1] (one factor) or [", heads, "] (one per head of ", input_name, "), got shape ",
                    s.sizes());
  TORCH_CHECK_VALUE(s.device() == q.device(), op, ": ", name, " must be on q's device (", q.device(), "), got ",
                    s.device());
}

}  // namespace

void check_scales(const char* op, const QuantArgs& quant, const at::Tensor& q, const char* k_name, const at::Tensor& k,
                  const char* v_name, const at::Tensor& v, int64_t num_qo_heads, int64_t num_kv_heads) {
  check_scale(op, "q_scale", quant.q_scale, "q", q, num_qo_heads, q);
  check_scale(op, "k_scale", quant.k_scale, k_name, k, num_kv_heads, q);
  check_scale(op, "v_scale", quant.v_scale, v_name, v, num_kv_heads, q);
}

Descales checked_descales(const char* op, const QuantArgs& quant, bool check_values) {
  auto take = [&](const char* name, const c10::optional<at::Tensor>& scale) -> at::Tensor {
    if (!scale.has_value()) return {};
    const at::Tensor s = scale->contiguous();
    // A zero, negative or non-finite factor has no meaning as a scale: on CUDA it goes through as
    // is (no host sync on the op path; README: it scales the scores or the output by that value).
    TORCH_CHECK_VALUE(!check_values || (s.gt(0).all().item<bool>() && at::isfinite(s).all().item<bool>()), op, ": ",
                      name, " must be positive and finite, got ", s.reshape(-1));
    return s;
  };
  return {take("q_scale", quant.q_scale), take("k_scale", quant.k_scale), take("v_scale", quant.v_scale)};
}

}  // namespace torch_attn
