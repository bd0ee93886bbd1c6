// CPU implementation of attn::prefill: the same semantics as the CUDA kernels, computed in
// float32 with ATen matrix products, blocked like them (query rows x key steps, an online
// softmax) and spread over ATen's threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/ThreadLocalState.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>
#include "prefill.h"

namespace torch_attn {
namespace {

// A task is kRowBlock query rows of all the query heads of one KV head (GQA: the group's heads
// stacked into one matrix, so K and V are read once for them); it walks the keys its rows see in
// steps of kKeyBlock with an online softmax, in its thread's buffers, which stay in cache.
constexpr int64_t kRowBlock = 128;
constexpr int64_t kKeyBlock = 256;
// On steps that some rows see only in part (the diagonal, a window's edge), the products run per span
// of about kSpanRows stacked rows over just the keys that span sees, not over the whole step.
constexpr int64_t kSpanRows = 128;

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

/// One sequence: q [qo_len, Hq, Dqk] (any dtype but fp8), and in float32 k [Hkv, kv_len, Dqk], v [Hkv,
/// kv_len, Dv], each head's keys contiguous (the matrix products read them at full speed); and where its
/// out [qo_len, Hq, Dv] and lse [qo_len, Hq] go.
struct CpuSequence {
  at::Tensor q, k, v, out, lse;
};

// The softmax loops are plain C++ for the compiler to vectorise; the build targets baseline x86-64,
// so on x86-64 Linux they also get AVX-512 and AVX2 clones, picked when the library loads.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define TORCH_ATTN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TORCH_ATTN_VECTOR_CLONES
#endif

constexpr float kInf = std::numeric_limits<float>::infinity();

/// exp(x) for x <= 0 within ~2 ulp, 0 below -87 (where float32 turns subnormal), NaN for NaN: Cephes'
/// expf without branches, so that loops of it vectorise (std::exp is a library call per element).
inline float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;
  const float n = (clamped * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;      // x - n ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

/// A task's running state: the stacked rows' max, sum and accumulator, and the buffers of its steps.
struct RowState {
  float* q;       // [rows, group, Dqk] as [stacked, Dqk], the scale folded in where no cap follows
  float* scores;  // [stacked, kKeyBlock], the step's scores, then its weights
  float* acc;     // [stacked, Dv]
  float* row_max;
  float* row_sum;
  int64_t* lo;  // per query row: the step's visible keys [lo, hi), relative to the step
  int64_t* hi;
};

// Eight floats as one value (GCC/Clang vector extension): float max and sum reductions vectorise only
// with -ffast-math, so the two below keep their partial results in these, two at a time.
typedef float Lanes __attribute__((vector_size(32)));
constexpr int kLanes = sizeof(Lanes) / sizeof(float);

inline Lanes load_lanes(const float* p) {
  Lanes x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

/// max of s[lo, hi), -inf if empty.
inline float max_of(const float* s, int64_t lo, int64_t hi) {
  Lanes a = -kInf - Lanes{}, b = a;
  int64_t j = lo;
  for (; j + 2 * kLanes <= hi; j += 2 * kLanes) {
    const Lanes x = load_lanes(s + j), y = load_lanes(s + j + kLanes);
    a = a < x ? x : a;
    b = b < y ? y : b;
  }
  a = a < b ? b : a;
  float m = -kInf;
  for (int l = 0; l < kLanes; ++l) m = std::max(m, a[l]);
  for (; j < hi; ++j) m = std::max(m, s[j]);
  return m;
}

/// sum of s[lo, hi).
inline float sum_of(const float* s, int64_t lo, int64_t hi) {
  Lanes a = {}, b = {};
  int64_t j = lo;
  for (; j + 2 * kLanes <= hi; j += 2 * kLanes) {
    a += load_lanes(s + j);
    b += load_lanes(s + j + kLanes);
  }
  a += b;
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += a[l];
  for (; j < hi; ++j) total += s[j];
  return total;
}

/// One key step of the online softmax, in passes over each row's scores while they are in L1: they
/// become weights (0 where hidden: select, never add -inf), the max and sum move, the accumulator rescales.
TORCH_ATTN_VECTOR_CLONES
void softmax_step(const RowState& st, int64_t group, int64_t rows, int64_t n, int64_t dv) {
  for (int64_t i = 0; i < group * rows; ++i) {
    float* s = st.scores + i * n;
    const int64_t lo = st.lo[i / group], hi = st.hi[i / group];
    std::fill(s, s + lo, 0.0f);
    std::fill(s + std::max(lo, hi), s + n, 0.0f);
    if (hi <= lo) continue;
    const float old_max = st.row_max[i], new_max = std::max(old_max, max_of(s, lo, hi));
    // -inf guard: a row that has seen no finite score yet would compute exp(-inf - -inf) = NaN.
    const float safe_max = new_max == -kInf ? 0.0f : new_max;
    for (int64_t j = lo; j < hi; ++j) s[j] = exp_nonpositive(s[j] - safe_max);
    if (new_max != old_max) {
      const float rescale = exp_nonpositive(old_max - safe_max);
      float* a = st.acc + i * dv;
      for (int64_t d = 0; d < dv; ++d) a[d] *= rescale;
      st.row_sum[i] *= rescale;
    }
    st.row_sum[i] += sum_of(s, lo, hi);
    st.row_max[i] = new_max;
  }
}

/// A thread's buffers, sized for the largest task of the call (allocated once per thread and call).
struct Workspace {
  at::Tensor floats, ints;
  RowState state;
  float* lse;

  Workspace(int64_t stacked, int64_t rows, int64_t head_dim, int64_t head_dim_v) {
    const int64_t sizes[] = {stacked * head_dim, stacked * kKeyBlock, stacked * head_dim_v, stacked, stacked, stacked};
    int64_t total = 0;
    for (int64_t size : sizes) total += (size + 15) / 16 * 16;  // each buffer 64-byte aligned
    floats = at::empty({total}, at::kFloat);
    ints = at::empty({2 * rows}, at::kLong);
    float* next = floats.data_ptr<float>();
    float* parts[6];
    for (int p = 0; p < 6; ++p) {
      parts[p] = next;
      next += (sizes[p] + 15) / 16 * 16;
    }
    state = {
        parts[0], parts[1], parts[2], parts[3], parts[4], ints.data_ptr<int64_t>(), ints.data_ptr<int64_t>() + rows};
    lse = parts[5];
  }
};

/// Query rows [row0, row0 + rows) of the query heads of KV head h.
void attend_rows(const CpuSequence& seq, int64_t h, int64_t row0, int64_t rows, const CpuScores& scores,
                 Workspace& ws) {
  const int64_t qo_len = seq.q.size(0), kv_len = seq.k.size(1), diag = kv_len - qo_len;
  const int64_t group = seq.q.size(1) / seq.k.size(0), head_dim = seq.q.size(2), head_dim_v = seq.v.size(2);
  const int64_t stacked = group * rows;
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

  const RowState& st = ws.state;
  const auto blob = [](float* data, at::IntArrayRef sizes) { return at::from_blob(data, sizes, at::kFloat); };
  // [rows * group, D]: the group's heads stacked row by row (a span of rows is a block of stacked rows);
  // the scale folded into q where no cap follows.
  const at::Tensor q_rows = seq.q.narrow(0, row0, rows).narrow(1, h * group, group);
  at::Tensor qb = blob(st.q, {rows, group, head_dim});
  qb.copy_(q_rows);
  if (scores.soft_cap <= 0) qb.mul_(scores.sm_scale);
  const at::Tensor q2d = qb.view({stacked, head_dim}), acc = blob(st.acc, {stacked, head_dim_v});
  std::fill(st.acc, st.acc + stacked * head_dim_v, 0.0f);
  std::fill(st.row_max, st.row_max + stacked, -kInf);
  std::fill(st.row_sum, st.row_sum + stacked, 0.0f);
  const at::Tensor keys = seq.k[h], values = seq.v[h];  // [kv_len, D]
  struct Span {
    int64_t row0, row_end, key0, key_end;  // stacked rows; keys relative to the step
  };
  std::vector<Span> spans;
  const int64_t span_rows = std::max<int64_t>(1, kSpanRows / group);
  for (int64_t t0 = key0; t0 < key_end; t0 += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, key_end - t0);
    spans.clear();
    for (int64_t r0 = 0; r0 < rows; r0 += span_rows) {
      const int64_t r1 = std::min(rows, r0 + span_rows);
      int64_t k0 = n, k1 = 0;
      for (int64_t r = r0; r < r1; ++r) {
        st.lo[r] = std::clamp<int64_t>(begins[r] - t0, 0, n);
        st.hi[r] = std::clamp<int64_t>(ends[r] - t0, 0, n);
        if (st.lo[r] < st.hi[r]) k0 = std::min(k0, st.lo[r]), k1 = std::max(k1, st.hi[r]);
      }
      if (k1 <= k0) continue;  // a window narrower than the block leaves spans (or steps) no row sees
      if (!spans.empty() && spans.back().row_end == r0 * group && spans.back().key0 == k0 &&
          spans.back().key_end == k1) {
        spans.back().row_end = r1 * group;
      } else {
        spans.push_back({r0 * group, r1 * group, k0, k1});
      }
    }
    if (spans.empty()) continue;
    const at::Tensor s = blob(st.scores, {stacked, n});
    // A span's rows of a [stacked, *] matrix, and its block of the step's scores (then weights).
    const auto rows_of = [](const at::Tensor& t, const Span& p) { return t.narrow(0, p.row0, p.row_end - p.row0); };
    const auto block_of = [&](const Span& p) { return rows_of(s, p).narrow(1, p.key0, p.key_end - p.key0); };
    for (const Span& p : spans) {
      at::Tensor block = block_of(p);
      at::mm_out(block, rows_of(q2d, p), keys.narrow(0, t0 + p.key0, p.key_end - p.key0).t());
      if (scores.soft_cap > 0) block.mul_(scores.sm_scale / scores.soft_cap).tanh_().mul_(scores.soft_cap);
    }
    softmax_step(st, group, rows, n, head_dim_v);
    for (const Span& p : spans) {
      rows_of(acc, p).addmm_(block_of(p), values.narrow(0, t0 + p.key0, p.key_end - p.key0));
    }
  }
  const float* sink = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  for (int64_t i = 0; i < stacked; ++i) {
    const float sum = st.row_sum[i], safe_max = st.row_max[i] == -kInf ? 0.0f : st.row_max[i];
    float row_lse = sum > 0 ? safe_max + std::log(sum) : -kInf;
    float* a = st.acc + i * head_dim_v;
    const float denom = sum > 0 ? sum : 1.0f;  // rows without keys: acc is 0
    for (int64_t d = 0; d < head_dim_v; ++d) a[d] /= denom;
    if (sink != nullptr) {
      // One more key per row with the head's sink as logit and value 0: it enters only the denominator
      // (at::logaddexp's formula; neither a key nor the sink, a sink of -inf: out stays 0, lse -inf).
      const float logit = sink[i % group];
      const float with_sink = std::isinf(row_lse) && row_lse == logit
                                  ? row_lse
                                  : std::max(row_lse, logit) + std::log1p(std::exp(-std::abs(row_lse - logit)));
      const float factor = with_sink == -kInf ? 0.0f : std::exp(row_lse - with_sink);
      for (int64_t d = 0; d < head_dim_v; ++d) a[d] *= factor;
      row_lse = with_sink;
    }
    ws.lse[i] = row_lse;
  }
  out.copy_(acc.view({rows, group, head_dim_v}));
  lse.copy_(blob(ws.lse, {rows, group}));
}

/// Runs body() once on each of `threads` of ATen's threads. at::parallel_for is a header template
/// that compiles to a serial loop without -fopenmp (this library's flags); TensorIterator::for_each
/// is compiled inside libtorch, so its parallel loop is real: one element of a dummy tensor a thread.
/// Inside it ATen and the BLAS see a parallel region and stay on their thread; each thread takes on the
/// caller's thread-local state (grad mode: under no_grad an input may still require grad).
template <typename F>
void on_threads(int64_t threads, const F& body) {
  const at::Tensor slots = at::empty({threads}, at::kByte);
  at::TensorIterator iter = at::TensorIteratorConfig().add_const_input(slots).build();
  const at::ThreadLocalState caller;
  iter.for_each(
      [&](char**, const int64_t*, int64_t, int64_t) {
        const at::ThreadLocalStateGuard guard(caller);
        body();
      },
      /*grain_size=*/1);
}

/// Every sequence's tasks (query-row blocks x KV heads), spread over ATen's threads: tasks write
/// disjoint rows and heads of out and lse. Each thread takes the next task until none is left, the
/// costliest first (causal blocks and ragged sequences differ many times over in work).
void attend_sequences(const std::vector<CpuSequence>& seqs, const CpuScores& scores) {
  struct Task {
    int64_t seq, kv_head, row0, cost;
  };
  std::vector<Task> tasks;
  int64_t max_rows = 0;
  for (int64_t b = 0; b < static_cast<int64_t>(seqs.size()); ++b) {
    const int64_t qo_len = seqs[b].q.size(0), kv_len = seqs[b].k.size(1);
    for (int64_t row0 = 0; row0 < qo_len; row0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, qo_len - row0);
      const int64_t first = scores.visible_keys(row0, kv_len - qo_len, kv_len).first;
      const int64_t last = std::min(kv_len, scores.visible_keys(row0 + rows - 1, kv_len - qo_len, kv_len).second);
      const int64_t cost = rows * (std::max<int64_t>(0, last - first) + 1);
      for (int64_t h = 0; h < seqs[b].k.size(0); ++h) tasks.push_back({b, h, row0, cost});
      max_rows = std::max(max_rows, rows);
    }
  }
  if (tasks.empty()) return;
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const at::Tensor& q = seqs.front().q;
  const int64_t group = q.size(1) / seqs.front().k.size(0), head_dim = q.size(2);
  const int64_t head_dim_v = seqs.front().v.size(2);
  const int64_t num_tasks = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next{0};
  on_threads(std::min<int64_t>(at::get_num_threads(), num_tasks), [&] {
    std::optional<Workspace> ws;
    for (int64_t i = next++; i < num_tasks; i = next++) {
      if (!ws) ws.emplace(group * max_rows, max_rows, head_dim, head_dim_v);
      const Task& t = tasks[i];
      const CpuSequence& seq = seqs[t.seq];
      attend_rows(seq, t.kv_head, t.row0, std::min(kRowBlock, seq.q.size(0) - t.row0), scores, *ws);
    }
  });
}

/// `t` [tokens, heads, D] as [heads, tokens, D] in float32, times its descale factor (fp8 inputs: the
/// real values; a factor per head, or one).
at::Tensor heads_first(const at::Tensor& t, const at::Tensor& descale) {
  at::Tensor values = at::empty({t.size(1), t.size(0), t.size(2)}, t.options().dtype(at::kFloat));
  values.copy_(t.transpose(0, 1));  // one pass: converts and transposes
  return descale.defined() ? values.mul_(descale.view({-1, 1, 1})) : values;
}

/// A sequence's tensors as attend_rows reads them; q stays in its dtype unless it has a descale factor
/// (the tasks convert their rows).
CpuSequence sequence_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                        const at::Tensor& lse, const Descales& descales) {
  const at::Tensor q_values = descales.q.defined() ? q.to(at::kFloat).mul(descales.q.view({1, -1, 1})) : q;
  return {q_values, heads_first(k, descales.k), heads_first(v, descales.v), out, lse};
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
