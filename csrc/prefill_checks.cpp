// Argument checks of attn::prefill, shared by the CPU and CUDA backends.
// torch_attn/_fake.py mirrors the shape checks for fake tensors, with the same
// messages (tests/test_bad_input.py runs both on every malformed call).
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <utility>
#include <vector>
#include "prefill.h"

namespace torch_attn {

std::string dtype_name(at::ScalarType type) { return "torch." + std::string(c10::getDtypeNames(type).first); }

namespace {

// The kernels keep token, head and sequence counts in int32.
constexpr int64_t kInt32Limit = int64_t{1} << 31;
constexpr int64_t kMaxHeadDim = 512;

const char* rank_help(int64_t dim) {
  return dim == 3 ? "[tokens, heads, head_dim]" : "[batch, tokens, heads, head_dim]";
}

void check_indptr(const char* name, const at::Tensor& indptr, const at::Tensor& q) {
  TORCH_CHECK_TYPE(indptr.scalar_type() == at::kInt, "attn.prefill: ", name, " must be int32, got ",
                   dtype_name(indptr.scalar_type()));
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() >= 1, "attn.prefill: ", name,
                    " must be a 1-D [batch + 1] tensor, got shape ", indptr.sizes());
  TORCH_CHECK_VALUE(indptr.device() == q.device(), "attn.prefill: ", name, " must be on q's device (", q.device(),
                    "), got ", indptr.device());
  TORCH_CHECK_VALUE(indptr.stride(0) == 1, "attn.prefill: ", name, " must be contiguous");
}

/// The scalar arguments every attention op shares; returns sm_scale with its default applied.
/// The kernels take the scale and the cap as float32: values past its range would turn into
/// inf there, and inf * 0 into NaN.
double check_mask_args(const char* op, int64_t head_dim_qk, c10::optional<double> sm_scale, int64_t window_left,
                       int64_t chunk_size, double logits_soft_cap) {
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  TORCH_CHECK_VALUE(window_left >= -1, op, ": window_left must be -1 (no window) or >= 0, got ", window_left);
  TORCH_CHECK_VALUE(chunk_size >= 0 && chunk_size < kInt32Limit, op,
                    ": chunk_size must be 0 (no chunks) or a key count from 1 to 2^31 - 1, got ", chunk_size);
  TORCH_CHECK_VALUE(std::isfinite(logits_soft_cap) && logits_soft_cap >= 0.0 && logits_soft_cap <= kFloatMax, op,
                    ": logits_soft_cap must be >= 0 (0 disables it) and finite in float32, got ", logits_soft_cap);
  const double scale = sm_scale.has_value() ? *sm_scale : 1.0 / std::sqrt(static_cast<double>(head_dim_qk));
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0.0 && scale <= kFloatMax, op,
                    ": sm_scale must be a positive number, finite in float32, got ", scale);
  TORCH_CHECK_VALUE(logits_soft_cap == 0.0 || scale / logits_soft_cap <= kFloatMax, op,
                    ": logits_soft_cap is too small for sm_scale (sm_scale / logits_soft_cap must be finite in "
                    "float32), got logits_soft_cap ",
                    logits_soft_cap, " and sm_scale ", scale);
  return scale;
}

/// The head dims of q . k (q's last dim) and of v (`v_name`'s): multiples of 8 (16-byte rows) up to 512
/// (Gemma 4's global layers; the CUDA kernels stop at 256: prefill_cuda.cpp).
void check_head_dims(const char* op, const char* v_name, int64_t head_dim_qk, int64_t head_dim_v) {
  TORCH_CHECK_VALUE(head_dim_qk % 8 == 0 && head_dim_qk >= 8 && head_dim_qk <= kMaxHeadDim, op,
                    ": head_dim (q.size(-1)) must be a multiple of 8 from 8 to 512, got ", head_dim_qk);
  TORCH_CHECK_VALUE(head_dim_v % 8 == 0 && head_dim_v >= 8 && head_dim_v <= kMaxHeadDim, op, ": ", v_name,
                    "'s head_dim (", v_name, ".size(-1)) must be a multiple of 8 from 8 to 512, got ", head_dim_v);
}

void check_int_vector(const char* name, const at::Tensor& t, int64_t dim, const at::Tensor& q) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, "attn.prefill_paged: ", name, " must be int32, got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == dim, "attn.prefill_paged: ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == q.device(), "attn.prefill_paged: ", name, " must be on q's device (", q.device(),
                    "), got ", t.device());
  TORCH_CHECK_VALUE(t.stride(-1) == 1, "attn.prefill_paged: ", name, " must have a contiguous last dimension");
}

}  // namespace

PrefillShape check_prefill_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                                c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                double logits_soft_cap, const QuantArgs& quant) {
  TORCH_CHECK_VALUE(q.dim() == 3 || q.dim() == 4,
                    "attn.prefill: q must be 3-D [tokens, heads, head_dim] or 4-D [batch, tokens, heads, head_dim], "
                    "got ",
                    q.dim(), "-D");
  TORCH_CHECK_VALUE(k.dim() == q.dim(), "attn.prefill: k must be ", q.dim(), "-D ", rank_help(q.dim()), " like q, got ",
                    k.dim(), "-D");
  TORCH_CHECK_VALUE(v.dim() == q.dim(), "attn.prefill: v must be ", q.dim(), "-D ", rank_help(q.dim()), " like q, got ",
                    v.dim(), "-D");
  const at::ScalarType out_dtype = check_dtypes("attn.prefill", q, "k", k, "v", v, quant.out_dtype);
  TORCH_CHECK_VALUE(k.device() == q.device(), "attn.prefill: k must be on q's device (", q.device(), "), got ",
                    k.device());
  TORCH_CHECK_VALUE(v.device() == q.device(), "attn.prefill: v must be on q's device (", q.device(), "), got ",
                    v.device());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"q", q}, {"k", k}, {"v", v}}) {
    TORCH_CHECK_VALUE(t.stride(-1) == 1, "attn.prefill: ", name,
                      " must have a contiguous last dimension (stride 1), got stride ", t.stride(-1));
  }

  const int64_t head_dim_qk = q.size(-1), head_dim_v = v.size(-1);
  check_head_dims("attn.prefill", "v", head_dim_qk, head_dim_v);
  TORCH_CHECK_VALUE(k.size(-1) == head_dim_qk, "attn.prefill: k's head_dim must equal q's (", head_dim_qk, "), got ",
                    k.size(-1));
  const int64_t num_qo_heads = q.size(-2), num_kv_heads = k.size(-2);
  TORCH_CHECK_VALUE(num_qo_heads >= 1 && num_kv_heads >= 1,
                    "attn.prefill: q and k need at least one head, got q heads ", num_qo_heads, ", k heads ",
                    num_kv_heads);
  TORCH_CHECK_VALUE(v.size(-2) == num_kv_heads, "attn.prefill: v must have k's number of heads (", num_kv_heads,
                    "), got ", v.size(-2));
  TORCH_CHECK_VALUE(num_qo_heads % num_kv_heads == 0, "attn.prefill: q's heads (", num_qo_heads,
                    ") must be a multiple of k's heads (", num_kv_heads, ") for GQA/MQA");
  TORCH_CHECK_VALUE(v.size(-3) == k.size(-3), "attn.prefill: v must have k's number of tokens (", k.size(-3), "), got ",
                    v.size(-3));

  const double scale = check_mask_args("attn.prefill", head_dim_qk, sm_scale, window_left, chunk_size, logits_soft_cap);
  check_scales("attn.prefill", quant, q, "k", k, "v", v, num_qo_heads, num_kv_heads);

  PrefillShape shape{};
  shape.out_dtype = out_dtype;
  shape.num_qo_heads = num_qo_heads;
  shape.num_kv_heads = num_kv_heads;
  shape.head_dim_qk = head_dim_qk;
  shape.head_dim_v = head_dim_v;
  shape.sm_scale = scale;
  TORCH_CHECK_VALUE(qo_indptr.has_value() == kv_indptr.has_value(),
                    "attn.prefill: qo_indptr and kv_indptr must be given together (a ragged batch) or both be None");
  shape.ragged = qo_indptr.has_value();
  if (shape.ragged) {
    TORCH_CHECK_VALUE(q.dim() == 3,
                      "attn.prefill: with qo_indptr/kv_indptr (a ragged batch), q, k and v must be 3-D "
                      "[total_tokens, heads, head_dim], got ",
                      q.dim(), "-D q");
    check_indptr("qo_indptr", *qo_indptr, q);
    check_indptr("kv_indptr", *kv_indptr, q);
    TORCH_CHECK_VALUE(kv_indptr->numel() == qo_indptr->numel(),
                      "attn.prefill: kv_indptr must have qo_indptr's length (", qo_indptr->numel(),
                      " = batch + 1), got ", kv_indptr->numel());
    shape.num_seqs = qo_indptr->numel() - 1;
    shape.qo_len = q.size(0);
    shape.kv_len = k.size(0);
  } else if (q.dim() == 4) {
    TORCH_CHECK_VALUE(k.size(0) == q.size(0) && v.size(0) == q.size(0),
                      "attn.prefill: k and v must have q's batch size (", q.size(0), "), got ", k.size(0), " and ",
                      v.size(0));
    shape.num_seqs = q.size(0);
    shape.qo_len = q.size(1);
    shape.kv_len = k.size(1);
  } else {
    shape.num_seqs = 1;
    shape.qo_len = q.size(0);
    shape.kv_len = k.size(0);
  }
  TORCH_CHECK_VALUE(shape.qo_len < kInt32Limit && shape.kv_len < kInt32Limit && num_qo_heads < kInt32Limit &&
                        shape.num_seqs < kInt32Limit,
                    "attn.prefill: at most 2^31 - 1 tokens, heads and sequences in q and in k/v, got q shape ",
                    q.sizes(), " and k shape ", k.sizes());
  return shape;
}

PagedShape check_prefill_paged_args(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                    const at::Tensor& qo_indptr, const at::Tensor& block_table,
                                    const at::Tensor& kv_lens, c10::string_view kv_layout,
                                    c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                    double logits_soft_cap, const QuantArgs& quant) {
  TORCH_CHECK_VALUE(kv_layout == "NHD" || kv_layout == "HND",
                    "attn.prefill_paged: kv_layout must be \"NHD\" or \"HND\", got \"", kv_layout, "\"");
  TORCH_CHECK_VALUE(q.dim() == 3, "attn.prefill_paged: q must be 3-D [total_tokens, heads, head_dim], got ", q.dim(),
                    "-D");
  TORCH_CHECK_VALUE(k_cache.dim() == 4,
                    "attn.prefill_paged: k_cache must be 4-D [pages, page_size, heads, head_dim] "
                    "(NHD) or [pages, heads, page_size, head_dim] (HND), got ",
                    k_cache.dim(), "-D");
  TORCH_CHECK_VALUE(v_cache.dim() == 4 && v_cache.sizes().slice(0, 3) == k_cache.sizes().slice(0, 3),
                    "attn.prefill_paged: v_cache must have k_cache's shape up to head_dim ",
                    k_cache.sizes().slice(0, 3), ", got ", v_cache.sizes());
  const at::ScalarType out_dtype =
      check_dtypes("attn.prefill_paged", q, "k_cache", k_cache, "v_cache", v_cache, quant.out_dtype);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"k_cache", k_cache}, {"v_cache", v_cache}}) {
    TORCH_CHECK_VALUE(t.device() == q.device(), "attn.prefill_paged: ", name, " must be on q's device (", q.device(),
                      "), got ", t.device());
  }
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"q", q}, {"k_cache", k_cache}, {"v_cache", v_cache}}) {
    TORCH_CHECK_VALUE(t.stride(-1) == 1, "attn.prefill_paged: ", name,
                      " must have a contiguous last dimension (stride 1), got stride ", t.stride(-1));
  }
  PagedShape shape{};
  shape.hnd = kv_layout == "HND";
  shape.num_pages = k_cache.size(0);
  shape.page_size = k_cache.size(shape.hnd ? 2 : 1);
  const int64_t num_kv_heads = k_cache.size(shape.hnd ? 1 : 2);
  const int64_t head_dim_qk = q.size(-1), head_dim_v = v_cache.size(3);
  check_head_dims("attn.prefill_paged", "v_cache", head_dim_qk, head_dim_v);
  TORCH_CHECK_VALUE(k_cache.size(3) == head_dim_qk, "attn.prefill_paged: k_cache's head_dim must equal q's (",
                    head_dim_qk, "), got ", k_cache.size(3));
  TORCH_CHECK_VALUE(shape.num_pages >= 1 && shape.page_size >= 1 && num_kv_heads >= 1,
                    "attn.prefill_paged: k_cache needs at least one page, page_size >= 1 and one head, got shape ",
                    k_cache.sizes());
  TORCH_CHECK_VALUE(q.size(1) >= 1 && q.size(1) % num_kv_heads == 0, "attn.prefill_paged: q's heads (", q.size(1),
                    ") must be a multiple of the cache's heads (", num_kv_heads, ") for GQA/MQA");
  check_int_vector("qo_indptr", qo_indptr, 1, q);
  check_int_vector("block_table", block_table, 2, q);
  check_int_vector("kv_lens", kv_lens, 1, q);
  const int64_t num_seqs = qo_indptr.numel() - 1;
  TORCH_CHECK_VALUE(num_seqs >= 0, "attn.prefill_paged: qo_indptr must have batch + 1 entries, got none");
  TORCH_CHECK_VALUE(block_table.size(0) == num_seqs, "attn.prefill_paged: block_table must have one row per sequence (",
                    num_seqs, "), got ", block_table.size(0));
  TORCH_CHECK_VALUE(kv_lens.numel() == num_seqs, "attn.prefill_paged: kv_lens must have one entry per sequence (",
                    num_seqs, "), got ", kv_lens.numel());
  shape.max_pages = block_table.size(1);
  const bool table_fits =
      shape.max_pages < kInt32Limit && shape.page_size < kInt32Limit && shape.max_pages * shape.page_size < kInt32Limit;
  TORCH_CHECK_VALUE(table_fits && q.size(0) < kInt32Limit && q.size(1) < kInt32Limit && num_seqs < kInt32Limit &&
                        shape.num_pages < kInt32Limit,
                    "attn.prefill_paged: at most 2^31 - 1 tokens in q and per sequence (block_table.size(1) * "
                    "page_size), heads, sequences and pages, got q shape ",
                    q.sizes(), ", k_cache shape ", k_cache.sizes(), " and block_table shape ", block_table.sizes());
  PrefillShape& common = shape.common;
  common.ragged = true;
  common.num_seqs = num_seqs;
  common.qo_len = q.size(0);
  common.kv_len = shape.max_pages * shape.page_size;
  common.num_qo_heads = q.size(1);
  common.num_kv_heads = num_kv_heads;
  common.head_dim_qk = head_dim_qk;
  common.head_dim_v = head_dim_v;
  common.sm_scale =
      check_mask_args("attn.prefill_paged", head_dim_qk, sm_scale, window_left, chunk_size, logits_soft_cap);
  check_scales("attn.prefill_paged", quant, q, "k_cache", k_cache, "v_cache", v_cache, common.num_qo_heads,
               num_kv_heads);
  common.out_dtype = out_dtype;
  return shape;
}

at::Tensor checked_sinks(const char* op, const c10::optional<at::Tensor>& sinks, const at::Tensor& q,
                         int64_t num_qo_heads) {
  if (!sinks.has_value()) return {};
  const at::Tensor& s = *sinks;
  const auto dtype = s.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
                   ": sinks must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == num_qo_heads, op, ": sinks must be [num_qo_heads] = [", num_qo_heads,
                    "], got shape ", s.sizes());
  TORCH_CHECK_VALUE(s.device() == q.device(), op, ": sinks must be on q's device (", q.device(), "), got ", s.device());
  return s.to(at::kFloat).contiguous();
}

namespace {

/// Whether two tensors may share an element: their address spans meet, and ATen cannot rule it
/// out (it can for dense tensors only; strided views in one buffer, e.g. an engine's slices, are
/// told apart by their spans).
bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0 || a.device() != b.device()) return false;
  auto span = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    return std::make_pair(begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size()));
  };
  const auto [a_begin, a_end] = span(a);
  const auto [b_begin, b_end] = span(b);
  return a_begin < b_end && b_begin < a_end && at::get_overlap_status(a, b) != at::MemOverlapStatus::No;
}

const at::Tensor* tensor_or_null(const c10::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

/// The out= overloads' buffers against what the op writes (prefill.h: check_prefill_out_args);
/// `inputs`: the call's other tensors (null: an absent optional one).
void check_out_args(const char* op, const at::Tensor& q, const PrefillShape& shape, const at::Tensor& out,
                    const c10::optional<at::Tensor>& lse, std::initializer_list<const at::Tensor*> inputs) {
  auto out_shape = q.sizes().vec();
  out_shape.back() = shape.head_dim_v;
  TORCH_CHECK_TYPE(out.scalar_type() == shape.out_dtype, op, ": out must have the output dtype (",
                   dtype_name(shape.out_dtype), ": q's, or out_dtype for fp8 q), got ", dtype_name(out.scalar_type()));
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(out_shape), op, ": out must be q's shape with v's head_dim ",
                    at::IntArrayRef(out_shape), ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.device() == q.device(), op, ": out must be on q's device (", q.device(), "), got ",
                    out.device());
  TORCH_CHECK_VALUE(out.stride(-1) == 1, op, ": out must have a contiguous last dimension (stride 1), got stride ",
                    out.stride(-1));
  std::vector<const at::Tensor*> written{&out};
  if (lse.has_value()) {
    const auto lse_shape = q.sizes().slice(0, q.dim() - 1);
    TORCH_CHECK_TYPE(lse->scalar_type() == at::kFloat, op, ": lse must be float32, got ",
                     dtype_name(lse->scalar_type()));
    TORCH_CHECK_VALUE(lse->sizes() == lse_shape, op, ": lse must be q's shape without head_dim ", lse_shape, ", got ",
                      lse->sizes());
    TORCH_CHECK_VALUE(lse->device() == q.device(), op, ": lse must be on q's device (", q.device(), "), got ",
                      lse->device());
    written.push_back(&*lse);
  }
  // Written rows that alias each other or an input would make the result depend on the order of the writes.
  for (const at::Tensor* t : written) {
    const char* name = t == &out ? "out" : "lse";
    TORCH_CHECK_VALUE(at::has_internal_overlap(*t) != at::MemOverlap::Yes, op, ": ", name,
                      " must not have elements that share memory (an expanded view), got strides ", t->strides());
    for (const at::Tensor* other : inputs) {
      TORCH_CHECK_VALUE(other == nullptr || !may_overlap(*t, *other), op, ": ", name,
                        " must not share memory with the op's inputs");
    }
  }
  TORCH_CHECK_VALUE(!lse.has_value() || !may_overlap(out, *lse), op, ": out and lse must not share memory");
}

}  // namespace

PrefillShape check_prefill_out_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const c10::optional<at::Tensor>& qo_indptr,
                                    const c10::optional<at::Tensor>& kv_indptr, c10::optional<double> sm_scale,
                                    int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                    const QuantArgs& quant, const c10::optional<at::Tensor>& sinks,
                                    const at::Tensor& out, const c10::optional<at::Tensor>& lse) {
  const PrefillShape shape =
      check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  check_out_args("attn.prefill", q, shape, out, lse,
                 {&q, &k, &v, tensor_or_null(qo_indptr), tensor_or_null(kv_indptr), tensor_or_null(sinks),
                  tensor_or_null(quant.q_scale), tensor_or_null(quant.k_scale), tensor_or_null(quant.v_scale)});
  return shape;
}

PagedShape check_prefill_paged_out_args(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                        const at::Tensor& qo_indptr, const at::Tensor& block_table,
                                        const at::Tensor& kv_lens, c10::string_view kv_layout,
                                        c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                                        double logits_soft_cap, const QuantArgs& quant,
                                        const c10::optional<at::Tensor>& sinks, const at::Tensor& out,
                                        const c10::optional<at::Tensor>& lse) {
  const PagedShape shape = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout,
                                                    sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  check_out_args("attn.prefill_paged", q, shape.common, out, lse,
                 {&q, &k_cache, &v_cache, &qo_indptr, &block_table, &kv_lens, tensor_or_null(sinks),
                  tensor_or_null(quant.q_scale), tensor_or_null(quant.k_scale), tensor_or_null(quant.v_scale)});
  return shape;
}

at::Tensor allocate_lse(const at::Tensor& q) {
  return at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
}

PrefillResult allocate_prefill_outputs(const at::Tensor& q, const PrefillShape& shape) {
  auto out_shape = q.sizes().vec();
  out_shape.back() = shape.head_dim_v;
  return {at::empty(out_shape, q.options().dtype(shape.out_dtype)), allocate_lse(q)};
}

}  // namespace torch_attn
