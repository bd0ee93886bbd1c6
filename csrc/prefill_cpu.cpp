// CPU implementation of attn::prefill: the same semantics as the CUDA kernels, computed in
// float32 with ATen matrix products, blocked like them (query rows x key steps, an online
// softmax) and spread over ATen's threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>
#include "prefill.h"

namespace torch_attn {
namespace {

// A task is kRowBlock query rows of all the query heads of one KV head (GQA: the group's heads
// stacked into one matrix, so K and V are read once for them); it walks the keys its rows see in
// steps of kKeyBlock with an online softmax. A step's scores ([group * rows, keys] floats, a few
// hundred KB) stay in cache through its handful of passes, where scores of whole key ranges
// went through memory on every pass.
constexpr int64_t kRowBlock = 128;
constexpr int64_t kKeyBlock = 256;

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

/// One sequence in float32: q [qo_len, Hq, Dqk], and k [Hkv, kv_len, Dqk], v [Hkv, kv_len, Dv] each head's
/// keys contiguous (the matrix products read them at full speed); and where its out [qo_len, Hq, Dv] and
/// lse [qo_len, Hq] go.
struct CpuSequence {
  at::Tensor q, k, v, out, lse;
};

/// Query rows [row0, row0 + rows) of the query heads of KV head h.
void attend_rows(const CpuSequence& seq, int64_t h, int64_t row0, int64_t rows, const CpuScores& scores) {
  const int64_t qo_len = seq.q.size(0), kv_len = seq.k.size(1), diag = kv_len - qo_len;
  const int64_t group = seq.q.size(1) / seq.k.size(0), head_dim_v = seq.v.size(2), stacked = group * rows;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  at::Tensor out = seq.out.narrow(0, row0, rows).narrow(1, h * group, group);  // [rows, group, Dv]
  at::Tensor lse = seq.lse.narrow(0, row0, rows).narrow(1, h * group, group);  // [rows, group]
  const at::Tensor sinks = scores.sinks.defined() ? scores.sinks.narrow(0, h * group, group) : at::Tensor();

  // Each row sees one interval of keys (visible_keys, the masks' one definition here); the block the union.
  std::vector<int64_t> begins(rows), ends(rows);
  for (int64_t r = 0; r < rows; ++r) std::tie(begins[r], ends[r]) = scores.visible_keys(row0 + r, diag, kv_len);
  const int64_t key0 = begins.front(), key_end = std::min(ends.back(), kv_len);
  if (key_end <= key0) {  // no key: out = 0, lse = -inf (the sink's logit with sinks)
    out.zero_();
    lse.copy_(sinks.defined() ? sinks.unsqueeze(0).expand_as(lse) : at::full_like(lse, -kInf));
    return;
  }
  const int64_t max_begin = *std::max_element(begins.begin(), begins.end());
  const int64_t min_end = *std::min_element(ends.begin(), ends.end());
  const at::Tensor begin_col = at::tensor(begins).view({rows, 1}), end_col = at::tensor(ends).view({rows, 1});

  // [group * rows, D]: the group's heads stacked; the scale folded into q where no cap follows.
  const at::Tensor q_rows =
      seq.q.narrow(0, row0, rows).narrow(1, h * group, group).permute({1, 0, 2}).reshape({stacked, seq.q.size(2)});
  const at::Tensor qb = scores.soft_cap > 0 ? q_rows : q_rows.mul(scores.sm_scale);
  const at::Tensor keys = seq.k[h], values = seq.v[h];  // [kv_len, D]
  at::Tensor score_buffer = at::empty({stacked * kKeyBlock}, f32);
  at::Tensor acc = at::zeros({stacked, head_dim_v}, f32);
  at::Tensor row_max = at::full({stacked, 1}, -kInf, f32), row_sum = at::zeros({stacked, 1}, f32), safe_max;
  for (int64_t t0 = key0; t0 < key_end; t0 += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, key_end - t0);
    at::Tensor s = score_buffer.narrow(0, 0, stacked * n).view({stacked, n});
    at::mm_out(s, qb, keys.narrow(0, t0, n).t());
    if (scores.soft_cap > 0) s.mul_(scores.sm_scale / scores.soft_cap).tanh_().mul_(scores.soft_cap);
    if (max_begin > t0 || min_end < t0 + n) {  // some row does not see all of these keys: select, never add
      const at::Tensor key_index = at::arange(t0, t0 + n, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
      const at::Tensor hidden = (key_index < begin_col).logical_or_(key_index >= end_col);
      s.view({group, rows, n}).masked_fill_(hidden.unsqueeze(0), -kInf);
    }
    const at::Tensor new_max = at::maximum(row_max, s.amax(1, /*keepdim=*/true));
    // -inf guard: a row that has seen no key yet would compute exp(-inf - -inf) = NaN.
    safe_max = new_max.masked_fill(new_max.isneginf(), 0.f);
    const at::Tensor rescale = (row_max - safe_max).exp_();
    s.sub_(safe_max).exp_();
    row_sum.mul_(rescale).add_(s.sum(1, /*keepdim=*/true));
    acc.mul_(rescale).addmm_(s, values.narrow(0, t0, n));
    row_max = new_max;
  }
  const at::Tensor saw_keys = row_sum > 0;
  acc.div_(at::where(saw_keys, row_sum, at::ones_like(row_sum)));  // rows without keys: acc is 0
  at::Tensor lse_rows = at::where(saw_keys, safe_max + row_sum.log(), at::full_like(row_sum, -kInf));
  if (sinks.defined()) {
    // One more key per row with the head's sink as logit and value 0: it enters only the denominator.
    const at::Tensor sink = sinks.view({group, 1}).expand({group, rows}).reshape({stacked, 1});
    const at::Tensor with_sink = at::logaddexp(lse_rows, sink);
    // Neither a key nor the sink (a sink of -inf): out stays 0 and lse -inf, never NaN.
    acc.mul_(at::where(with_sink.isneginf(), at::zeros_like(lse_rows), (lse_rows - with_sink).exp()));
    lse_rows = with_sink;
  }
  out.copy_(acc.view({group, rows, head_dim_v}).permute({1, 0, 2}));
  lse.copy_(lse_rows.view({group, rows}).t());
}

/// Every sequence's tasks (query-row blocks x KV heads), spread over ATen's threads: tasks write
/// disjoint rows and heads of out and lse.
void attend_sequences(const std::vector<CpuSequence>& seqs, const CpuScores& scores) {
  struct Task {
    int64_t seq, kv_head, row0;
  };
  std::vector<Task> tasks;
  for (int64_t b = 0; b < static_cast<int64_t>(seqs.size()); ++b) {
    for (int64_t h = 0; h < seqs[b].k.size(0); ++h) {
      for (int64_t row0 = 0; row0 < seqs[b].q.size(0); row0 += kRowBlock) tasks.push_back({b, h, row0});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const Task& t = tasks[i];
      const CpuSequence& seq = seqs[t.seq];
      attend_rows(seq, t.kv_head, t.row0, std::min(kRowBlock, seq.q.size(0) - t.row0), scores);
    }
  });
}

/// `t` [tokens, heads, D] in float32, times its descale factor (fp8 inputs: the real values; a
/// factor per head, or one).
at::Tensor dequantized(const at::Tensor& t, const at::Tensor& descale) {
  const at::Tensor values = t.to(at::kFloat);
  return descale.defined() ? values.mul(descale.view({1, -1, 1})) : values;
}

/// A sequence's tensors as attend_rows reads them.
CpuSequence sequence_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                        const at::Tensor& lse, const Descales& descales) {
  auto heads_first = [](const at::Tensor& t) { return t.transpose(0, 1).contiguous(); };
  return {dequantized(q, descales.q), heads_first(dequantized(k, descales.k)), heads_first(dequantized(v, descales.v)),
          out, lse};
}

/// Host-side check of ragged indptr values (possible on CPU, where reading them costs no sync).
void check_indptr_values(const char* name, const at::Tensor& indptr, int64_t rows) {
  const int32_t* ptr = indptr.data_ptr<int32_t>();
  for (int64_t b = 0; b + 1 < indptr.numel(); ++b) {
    TORCH_CHECK_VALUE(ptr[b] >= 0 && ptr[b] <= ptr[b + 1] && ptr[b + 1] <= rows, "attn.prefill: ", name,
                      " must be non-decreasing within [0, ", rows, "], got ", name, "[", b, ":", b + 2, "] = [", ptr[b],
                      ", ", ptr[b + 1], "]");
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
                      const PrefillShape& shape, const CpuScores& scores, const Descales& descales,
                      const at::Tensor& out, const at::Tensor& lse) {
  std::vector<CpuSequence> seqs;
  if (shape.ragged) {
    check_indptr_values("qo_indptr", *qo_indptr, shape.qo_len);
    check_indptr_values("kv_indptr", *kv_indptr, shape.kv_len);
    const int32_t* qo = qo_indptr->data_ptr<int32_t>();
    const int32_t* kv = kv_indptr->data_ptr<int32_t>();
    for (int64_t b = 0; b < shape.num_seqs; ++b) {
      const int64_t q0 = qo[b], q_len = qo[b + 1] - qo[b], k0 = kv[b], k_len = kv[b + 1] - kv[b];
      seqs.push_back(sequence_of(q.narrow(0, q0, q_len), k.narrow(0, k0, k_len), v.narrow(0, k0, k_len),
                                 out.narrow(0, q0, q_len), lse.narrow(0, q0, q_len), descales));
    }
  } else if (q.dim() == 4) {
    for (int64_t b = 0; b < shape.num_seqs; ++b) {
      seqs.push_back(sequence_of(q[b], k[b], v[b], out[b], lse[b], descales));
    }
  } else {
    seqs.push_back(sequence_of(q, k, v, out, lse, descales));
  }
  attend_sequences(seqs, scores);
}

}  // namespace

PrefillResult prefill_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                          bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                          double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                          const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                          const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PrefillShape shape =
      check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  const CpuScores scores{causal,          window_left,    chunk_size,
                         logits_soft_cap, shape.sm_scale, checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads)};
  const Descales descales = checked_descales("attn.prefill", quant, /*check_values=*/true);
  auto [out, lse] = allocate_prefill_outputs(q, shape);
  prefill_cpu_into(q, k, v, qo_indptr, kv_indptr, shape, scores, descales, out, lse);
  return {out, lse};
}

void prefill_out_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                     bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                     double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                     const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                     const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                     const at::Tensor& out, const c10::optional<at::Tensor>& lse) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PrefillShape shape = check_prefill_out_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size,
                                                    logits_soft_cap, quant, sinks, out, lse);
  const CpuScores scores{causal,          window_left,    chunk_size,
                         logits_soft_cap, shape.sm_scale, checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads)};
  const Descales descales = checked_descales("attn.prefill", quant, /*check_values=*/true);
  const at::Tensor lse_rows = lse.has_value() ? *lse : allocate_lse(q);
  prefill_cpu_into(q, k, v, qo_indptr, kv_indptr, shape, scores, descales, out, lse_rows);
}

}  // namespace torch_attn

namespace torch_attn {

namespace {

/// attn::prefill_paged on the CPU into out / lse.
void prefill_paged_cpu_into(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                            const PagedShape& shape, const CpuScores& scores, const Descales& descales,
                            const at::Tensor& out, const at::Tensor& lse) {
  check_indptr_values("qo_indptr", qo_indptr, shape.common.qo_len);
  std::vector<CpuSequence> seqs;
  const int32_t* qo = qo_indptr.data_ptr<int32_t>();
  const auto lens = kv_lens.accessor<int32_t, 1>();
  for (int64_t b = 0; b < shape.common.num_seqs; ++b) {
    const int64_t kv_len = lens[b];
    TORCH_CHECK_VALUE(kv_len >= 0 && kv_len <= shape.max_pages * shape.page_size, "attn.prefill_paged: kv_lens[", b,
                      "] = ", kv_len,
                      " must be within [0, block_table.size(1) * page_size = ", shape.max_pages * shape.page_size, "]");
    const at::Tensor pages = block_table[b].narrow(0, 0, (kv_len + shape.page_size - 1) / shape.page_size);
    TORCH_CHECK_VALUE(
        pages.numel() == 0 || (pages.min().item<int32_t>() >= 0 && pages.max().item<int32_t>() < shape.num_pages),
        "attn.prefill_paged: block_table[", b, "] names pages outside [0, ", shape.num_pages, ")");
    const int64_t q0 = qo[b], q_len = qo[b + 1] - qo[b];
    seqs.push_back(sequence_of(q.narrow(0, q0, q_len), gather_pages(k_cache, pages, shape.hnd, kv_len),
                               gather_pages(v_cache, pages, shape.hnd, kv_len), out.narrow(0, q0, q_len),
                               lse.narrow(0, q0, q_len), descales));
  }
  attend_sequences(seqs, scores);
}

}  // namespace

PrefillResult prefill_paged_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                                c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                                int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                                const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                                c10::optional<at::ScalarType> out_dtype) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PagedShape shape = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout,
                                                    sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  const CpuScores scores{
      causal,          window_left,           chunk_size,
      logits_soft_cap, shape.common.sm_scale, checked_sinks("attn.prefill_paged", sinks, q, shape.common.num_qo_heads)};
  const Descales descales = checked_descales("attn.prefill_paged", quant, /*check_values=*/true);
  auto [out, lse] = allocate_prefill_outputs(q, shape.common);
  prefill_paged_cpu_into(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, shape, scores, descales, out, lse);
  return {out, lse};
}

void prefill_paged_out_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                           c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale, int64_t window_left,
                           int64_t chunk_size, double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                           const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                           const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                           const at::Tensor& out, const c10::optional<at::Tensor>& lse) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PagedShape shape =
      check_prefill_paged_out_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale,
                                   window_left, chunk_size, logits_soft_cap, quant, sinks, out, lse);
  const CpuScores scores{
      causal,          window_left,           chunk_size,
      logits_soft_cap, shape.common.sm_scale, checked_sinks("attn.prefill_paged", sinks, q, shape.common.num_qo_heads)};
  const Descales descales = checked_descales("attn.prefill_paged", quant, /*check_values=*/true);
  const at::Tensor lse_rows = lse.has_value() ? *lse : allocate_lse(q);
  prefill_paged_cpu_into(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, shape, scores, descales, out, lse_rows);
}

}  // namespace torch_attn
