// CPU implementation of attn::prefill: the same semantics as the CUDA kernel,
// computed in float32 with ATen matrix products, a block of query rows at a time
// so memory stays bounded on long sequences.
#include <ATen/ATen.h>
#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include "prefill.h"

namespace torch_attn {
namespace {

constexpr int64_t kQueryBlock = 256;  // query rows per block: 256 x kv_len scores per head

/// What turns q . k into softmax weights: the masks, the scale, the cap and the sinks.
struct CpuScores {
  bool causal;
  int64_t window_left;
  int64_t chunk_size;
  double soft_cap;
  double sm_scale;
  at::Tensor sinks;  // float32 [Hq] sink logits, or undefined

  /// The keys [first, second) that query i sees, diag = kv_len - qo_len (kernels/common/mask.cuh: the
  /// interval grows with i, so a block of rows sees the union of its first row's and last row's).
  std::pair<int64_t, int64_t> visible_keys(int64_t i, int64_t diag, int64_t kv_len) const {
    const int64_t last = i + diag;
    int64_t begin = window_left >= 0 ? std::max<int64_t>(0, last - window_left) : 0;
    int64_t end = causal ? std::min(kv_len, last + 1) : kv_len;
    if (chunk_size > 0) {
      const int64_t chunk_begin = (last >= 0 ? last / chunk_size : (last + 1) / chunk_size - 1) * chunk_size;
      begin = std::max(begin, chunk_begin);
      end = std::min(end, chunk_begin + chunk_size);
    }
    return {begin, end};
  }
};

/// Rows that see no key: out = 0, lse = -inf (the sink's logit with sinks). out [rows, Hq, Dv], lse [rows, Hq].
void write_rows_without_keys(at::Tensor out, at::Tensor lse, const CpuScores& scores) {
  out.zero_();
  if (scores.sinks.defined()) {
    lse.copy_(scores.sinks.unsqueeze(0).expand_as(lse));
  } else {
    lse.fill_(-std::numeric_limits<float>::infinity());
  }
}

/// Attention sinks: one more key per row whose logit is the head's sink and whose value is 0,
/// so it enters only the softmax's denominator: lse' = logaddexp(lse, sink), out *= e^(lse - lse').
/// lse, out: [Hkv, group, rows, 1 / D].
void add_sinks(const at::Tensor& sinks, at::Tensor& out, at::Tensor& lse) {
  const at::Tensor sink = sinks.view({lse.size(0), lse.size(1), 1, 1});
  const at::Tensor with_sink = at::logaddexp(lse, sink);
  // Neither a key nor the sink (a sink of -inf): out stays 0 and lse -inf, never NaN.
  out = out * at::where(at::isneginf(with_sink), at::zeros_like(lse), at::exp(lse - with_sink));
  lse = with_sink;
}

/// One sequence: q [qo_len, Hq, Dqk], k [kv_len, Hkv, Dqk], v [kv_len, Hkv, Dv] -> out [qo_len, Hq, Dv],
/// lse [qo_len, Hq].
void attend_sequence(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor out, at::Tensor lse,
                     const CpuScores& scores) {
  const int64_t qo_len = q.size(0), kv_len = k.size(0);
  const int64_t num_qo_heads = q.size(1), num_kv_heads = k.size(1), head_dim_qk = q.size(2), head_dim_v = v.size(2);
  const int64_t group = num_qo_heads / num_kv_heads;
  if (qo_len == 0) return;
  const auto f32 = at::kFloat;
  // Query heads of one KV head stacked along rows: [Hkv, group, rows, D], no copy of K/V per group.
  const at::Tensor kf = k.to(f32).permute({1, 2, 0});  // [Hkv, D, kv_len]
  const at::Tensor vf = v.to(f32).permute({1, 0, 2});  // [Hkv, kv_len, D]
  const at::Tensor keys = at::arange(kv_len, at::TensorOptions().dtype(at::kLong));
  const int64_t diag = kv_len - qo_len;  // bottom-right alignment

  for (int64_t row0 = 0; row0 < qo_len; row0 += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, qo_len - row0);
    // Only the keys some row of the block sees: the rest are skipped, not masked.
    const int64_t key0 = scores.visible_keys(row0, diag, kv_len).first;
    const int64_t key_end = scores.visible_keys(row0 + rows - 1, diag, kv_len).second;
    if (key_end <= key0) {
      write_rows_without_keys(out.narrow(0, row0, rows), lse.narrow(0, row0, rows), scores);
      continue;
    }
    const int64_t cols = key_end - key0;
    const at::Tensor qb = q.narrow(0, row0, rows).to(f32).view({rows, num_kv_heads, group, head_dim_qk})
                              .permute({1, 2, 0, 3}).reshape({num_kv_heads, group * rows, head_dim_qk});
    at::Tensor logits = at::bmm(qb, kf.narrow(2, key0, cols)).view({num_kv_heads, group, rows, cols});
    if (scores.soft_cap > 0) {
      logits = at::tanh(logits * (scores.sm_scale / scores.soft_cap)) * scores.soft_cap;
    } else {
      logits = logits * scores.sm_scale;
    }
    // Each row sees one interval of keys (visible_keys, the masks' one definition here).
    at::Tensor begin = at::empty({rows, 1}, keys.options()), end = at::empty({rows, 1}, keys.options());
    for (int64_t r = 0; r < rows; ++r) {
      std::tie(begin.data_ptr<int64_t>()[r], end.data_ptr<int64_t>()[r]) = scores.visible_keys(row0 + r, diag, kv_len);
    }
    const at::Tensor block_keys = keys.narrow(0, key0, cols).unsqueeze(0);  // [1, cols]
    const at::Tensor visible = (block_keys >= begin) & (block_keys < end);
    logits = at::where(visible, logits, -std::numeric_limits<float>::infinity());  // select, never add

    const at::Tensor row_max = std::get<0>(logits.max(-1, /*keepdim=*/true));
    // -inf guard: a row that sees no key would compute exp(-inf - -inf) = NaN.
    const at::Tensor safe_max = at::where(at::isinf(row_max), at::zeros_like(row_max), row_max);
    const at::Tensor weights = at::exp(logits - safe_max);
    const at::Tensor row_sum = weights.sum(-1, /*keepdim=*/true);
    at::Tensor ob = at::bmm(weights.view({num_kv_heads, group * rows, cols}), vf.narrow(1, key0, cols))
                        .view({num_kv_heads, group, rows, head_dim_v});
    const at::Tensor saw_keys = row_sum > 0;
    ob = at::where(saw_keys, ob / at::where(saw_keys, row_sum, at::ones_like(row_sum)), at::zeros_like(ob));
    at::Tensor lb = at::where(saw_keys, safe_max + at::log(row_sum),
                              at::full_like(row_sum, -std::numeric_limits<float>::infinity()));
    if (scores.sinks.defined()) add_sinks(scores.sinks, ob, lb);
    // [Hkv, group, rows, *] -> [rows, Hq, *]
    out.narrow(0, row0, rows).copy_(ob.permute({2, 0, 1, 3}).reshape({rows, num_qo_heads, head_dim_v}));
    lse.narrow(0, row0, rows).copy_(lb.squeeze(-1).permute({2, 0, 1}).reshape({rows, num_qo_heads}));
  }
}

/// Host-side check of ragged indptr values (possible on CPU, where reading them costs no sync).
void check_indptr_values(const char* name, const at::Tensor& indptr, int64_t rows) {
  const int32_t* ptr = indptr.data_ptr<int32_t>();
  for (int64_t b = 0; b + 1 < indptr.numel(); ++b) {
    TORCH_CHECK_VALUE(ptr[b] >= 0 && ptr[b] <= ptr[b + 1] && ptr[b + 1] <= rows, "attn.prefill: ", name,
                      " must be non-decreasing within [0, ", rows, "], got ", name, "[", b, ":", b + 2, "] = [",
                      ptr[b], ", ", ptr[b + 1], "]");
  }
}

/// The keys of one sequence gathered from its pages: [kv_len, heads, D].
at::Tensor gather_pages(const at::Tensor& cache, const at::Tensor& pages, bool hnd, int64_t kv_len) {
  const at::Tensor selected = cache.index_select(0, pages.to(at::kLong));  // NHD [n, ps, H, D] or HND [n, H, ps, D]
  const at::Tensor tokens_first = hnd ? selected.permute({0, 2, 1, 3}) : selected;
  return tokens_first.reshape({-1, cache.size(hnd ? 1 : 2), cache.size(3)}).narrow(0, 0, kv_len);
}

}  // namespace

namespace {

/// attn::prefill on the CPU into out / lse (checked, or allocated here).
void prefill_cpu_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                      const PrefillShape& shape, const CpuScores& scores, const at::Tensor& out,
                      const at::Tensor& lse) {
  if (shape.ragged) {
    check_indptr_values("qo_indptr", *qo_indptr, shape.qo_len);
    check_indptr_values("kv_indptr", *kv_indptr, shape.kv_len);
    const int32_t* qo = qo_indptr->data_ptr<int32_t>();
    const int32_t* kv = kv_indptr->data_ptr<int32_t>();
    for (int64_t b = 0; b < shape.num_seqs; ++b) {
      const int64_t q0 = qo[b], q_len = qo[b + 1] - qo[b], k0 = kv[b], k_len = kv[b + 1] - kv[b];
      attend_sequence(q.narrow(0, q0, q_len), k.narrow(0, k0, k_len), v.narrow(0, k0, k_len), out.narrow(0, q0, q_len),
                      lse.narrow(0, q0, q_len), scores);
    }
  } else if (q.dim() == 4) {
    for (int64_t b = 0; b < shape.num_seqs; ++b) attend_sequence(q[b], k[b], v[b], out[b], lse[b], scores);
  } else {
    attend_sequence(q, k, v, out, lse, scores);
  }
}

}  // namespace

PrefillResult prefill_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                          bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                          double logits_soft_cap, const c10::optional<at::Tensor>& sinks) {
  const PrefillShape shape =
      check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap);
  const CpuScores scores{causal, window_left, chunk_size, logits_soft_cap, shape.sm_scale,
                         checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads)};
  auto [out, lse] = allocate_prefill_outputs(q, shape.head_dim_v);
  prefill_cpu_into(q, k, v, qo_indptr, kv_indptr, shape, scores, out, lse);
  return {out, lse};
}

void prefill_out_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                     bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                     double logits_soft_cap, const c10::optional<at::Tensor>& sinks, const at::Tensor& out,
                     const c10::optional<at::Tensor>& lse) {
  const PrefillShape shape =
      check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap);
  check_out_args("attn.prefill", q, shape.head_dim_v, out, lse,
                 {&q, &k, &v, tensor_or_null(qo_indptr), tensor_or_null(kv_indptr), tensor_or_null(sinks)});
  const CpuScores scores{causal, window_left, chunk_size, logits_soft_cap, shape.sm_scale,
                         checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads)};
  const at::Tensor lse_rows = lse.has_value() ? *lse : std::get<1>(allocate_prefill_outputs(q, shape.head_dim_v));
  prefill_cpu_into(q, k, v, qo_indptr, kv_indptr, shape, scores, out, lse_rows);
}

}  // namespace torch_attn

namespace torch_attn {

namespace {

/// attn::prefill_paged on the CPU into out / lse.
void prefill_paged_cpu_into(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                            const PagedShape& shape, const CpuScores& scores, const at::Tensor& out,
                            const at::Tensor& lse) {
  check_indptr_values("qo_indptr", qo_indptr, shape.common.qo_len);
  const int32_t* qo = qo_indptr.data_ptr<int32_t>();
  const auto lens = kv_lens.accessor<int32_t, 1>();
  for (int64_t b = 0; b < shape.common.num_seqs; ++b) {
    const int64_t kv_len = lens[b];
    TORCH_CHECK_VALUE(kv_len >= 0 && kv_len <= shape.max_pages * shape.page_size, "attn.prefill_paged: kv_lens[", b,
                      "] = ", kv_len, " must be within [0, block_table.size(1) * page_size = ",
                      shape.max_pages * shape.page_size, "]");
    const at::Tensor pages = block_table[b].narrow(0, 0, (kv_len + shape.page_size - 1) / shape.page_size);
    TORCH_CHECK_VALUE(pages.numel() == 0 || (pages.min().item<int32_t>() >= 0 &&
                                             pages.max().item<int32_t>() < shape.num_pages),
                      "attn.prefill_paged: block_table[", b, "] names pages outside [0, ", shape.num_pages, ")");
    const int64_t q0 = qo[b], q_len = qo[b + 1] - qo[b];
    attend_sequence(q.narrow(0, q0, q_len), gather_pages(k_cache, pages, shape.hnd, kv_len),
                    gather_pages(v_cache, pages, shape.hnd, kv_len), out.narrow(0, q0, q_len), lse.narrow(0, q0, q_len),
                    scores);
  }
}

}  // namespace

PrefillResult prefill_paged_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                                c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                                int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                const c10::optional<at::Tensor>& sinks) {
  const PagedShape shape = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout,
                                                    sm_scale, window_left, chunk_size, logits_soft_cap);
  const CpuScores scores{causal, window_left, chunk_size, logits_soft_cap, shape.common.sm_scale,
                         checked_sinks("attn.prefill_paged", sinks, q, shape.common.num_qo_heads)};
  auto [out, lse] = allocate_prefill_outputs(q, shape.common.head_dim_v);
  prefill_paged_cpu_into(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, shape, scores, out, lse);
  return {out, lse};
}

void prefill_paged_out_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                           c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                           int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                           const c10::optional<at::Tensor>& sinks, const at::Tensor& out,
                           const c10::optional<at::Tensor>& lse) {
  const PagedShape shape = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout,
                                                    sm_scale, window_left, chunk_size, logits_soft_cap);
  check_out_args("attn.prefill_paged", q, shape.common.head_dim_v, out, lse,
                 {&q, &k_cache, &v_cache, &qo_indptr, &block_table, &kv_lens, tensor_or_null(sinks)});
  const CpuScores scores{causal, window_left, chunk_size, logits_soft_cap, shape.common.sm_scale,
                         checked_sinks("attn.prefill_paged", sinks, q, shape.common.num_qo_heads)};
  const at::Tensor lse_rows =
      lse.has_value() ? *lse : std::get<1>(allocate_prefill_outputs(q, shape.common.head_dim_v));
  prefill_paged_cpu_into(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, shape, scores, out, lse_rows);
}

}  // namespace torch_attn
