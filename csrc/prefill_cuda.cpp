// CUDA host glue of attn::prefill: checks, kernel parameters, dispatch by
// (dtype, head-dim tile), launch on the current stream. Never synchronises and
// never reads device data, so the op can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>
#include "cuda_scratch.h"
#include "launch/prefill_launch.h"
#include "launcher_registry.h"
#include "prefill.h"

namespace torch_attn {
namespace {

/// The narrowest tile of `backend` that holds both head dims: the least q/k + v width (the work of
/// a score and its P V), the first such in the table, or null; its family may not be loaded yet (launch_fn).
const Launcher* find_launcher(Backend backend, KernelKind kind, const PrefillShape& shape) {
  const Launcher* found = nullptr;
  for (const Launcher& l : launcher_table()) {
    const bool fits = l.head_dim_tile >= shape.head_dim_qk && l.head_dim_v_tile >= shape.head_dim_v;
    if (l.backend == backend && l.kind.kind == kind.kind && l.kind.fp8_kv == kind.fp8_kv && fits &&
        (found == nullptr || l.head_dim_tile + l.head_dim_v_tile < found->head_dim_tile + found->head_dim_v_tile)) {
      found = &l;
    }
  }
  return found;
}

const Launcher& pick_launcher(const char* op, Backend backend, KernelKind kind, const PrefillShape& shape) {
  const Launcher* found = find_launcher(backend, kind, shape);
  TORCH_CHECK_VALUE(found != nullptr, op, ": no CUDA kernel for head dims (", shape.head_dim_qk, ", ", shape.head_dim_v,
                    ")",
                    backend == Backend::kSm90 ? " in the wgmma kernel (TORCH_ATTN_BACKEND=sm90); sm80 runs them" : "");
  return *found;
}

/// Query rows per CTA of the launcher's kernel.
int64_t block_m_of(const Launcher& launcher) {
  return launcher.backend == Backend::kSm90 ? prefill_sm90_block_m(launcher.head_dim_tile, launcher.head_dim_v_tile)
                                            : prefill_block_m(launcher.head_dim_tile);
}

/// Query tiles per head. Dense: exactly B * ceil(S / BM). Ragged: sum_b ceil(len_b / BM)
/// <= total / BM + B, a bound from shapes alone (no read of the device indptr).
int64_t query_tile_slots(const Launcher& launcher, const PrefillShape& shape) {
  const int64_t block_m = block_m_of(launcher);
  return shape.ragged ? shape.qo_len / block_m + shape.num_seqs
                      : shape.num_seqs * ((shape.qo_len + block_m - 1) / block_m);
}

/// A device attribute, read once per device: queries on every call would cost time
/// on the 128-token latency path.
template <cudaDeviceAttr kAttr>
int cached_attribute(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices] = {};  // value + 1; 0: not read yet
  const int cached = device < kMaxDevices ? known[device].load(std::memory_order_relaxed) : 0;
  if (cached > 0) return cached - 1;
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, device));
  if (device < kMaxDevices) known[device].store(value + 1, std::memory_order_relaxed);
  return value;
}

/// Compute capability of `device` as 10 * major + minor.
int compute_capability(int device) {
  return 10 * cached_attribute<cudaDevAttrComputeCapabilityMajor>(device) +
         cached_attribute<cudaDevAttrComputeCapabilityMinor>(device);
}

/// Whether this build holds sm_90a machine code (the build adds the define when
/// its arch list has 9.0a); without it the wgmma kernel is an empty stub.
#ifdef TORCH_ATTN_HAS_SM90A
constexpr bool kBuiltWithSm90a = true;
#else
constexpr bool kBuiltWithSm90a = false;
#endif

struct BackendChoice {
  Backend backend;
  bool forced;  // TORCH_ATTN_BACKEND named it: no fallback to the other kernel
};

/// The wgmma kernel on compute capability 9.0 (sm_90a code runs on 9.0 only) in
/// builds that have it, the mma.sync kernel elsewhere. TORCH_ATTN_BACKEND=sm80|sm90
/// forces one (for tests and comparisons); it is read on every call, so a process
/// can switch between calls.
BackendChoice pick_backend(int device) {
  const char* env = std::getenv("TORCH_ATTN_BACKEND");
  const bool sm90_here = kBuiltWithSm90a && compute_capability(device) == 90;
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) {
    return {sm90_here ? Backend::kSm90 : Backend::kSm80, false};
  }
  if (std::strcmp(env, "sm80") == 0) return {Backend::kSm80, true};
  TORCH_CHECK_VALUE(std::strcmp(env, "sm90") == 0, "TORCH_ATTN_BACKEND: expected auto, sm80 or sm90, got '", env, "'");
  TORCH_CHECK_VALUE(sm90_here,
                    "TORCH_ATTN_BACKEND=sm90: the wgmma kernel needs a GPU of compute capability 9.0 and a "
                    "build with sm_90a code; this GPU is ",
                    compute_capability(device) / 10, ".", compute_capability(device) % 10, " and the build ",
                    kBuiltWithSm90a ? "has" : "lacks", " sm_90a");
  return {Backend::kSm90, true};
}

/// The kernels read rows 16 bytes at a time (cp.async, the copy engine): every row must
/// start 16-byte aligned.
void check_cuda_layout(const char* op, const char* name, const at::Tensor& t) {
  const int64_t elems_per_16_bytes = 16 / static_cast<int64_t>(t.element_size());
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    aligned = aligned && (t.size(d) <= 1 || t.stride(d) % elems_per_16_bytes == 0);
  }
  TORCH_CHECK_VALUE(aligned, op, ": on CUDA, ", name,
                    " must start 16-byte aligned and have strides that are "
                    "multiples of ",
                    elems_per_16_bytes, " elements (every row 16-byte aligned), got strides ", t.strides(),
                    " and storage offset ", t.storage_offset());
}

ElementFormat format_of(at::ScalarType type) {
  return type == at::kFloat8_e4m3fn ? ElementFormat::kE4M3
                                    : (type == at::kFloat8_e5m2 ? ElementFormat::kE5M2 : ElementFormat::kCompute);
}

Descale descale_param(const at::Tensor& scale) {
  if (!scale.defined()) return {nullptr, 0};
  return {scale.data_ptr<float>(), scale.numel() > 1 ? 1 : 0};
}

TokenHeadStrides strides_of(const at::Tensor& t, bool batched) {
  // Batched: [B, S, H, D]; otherwise [S, H, D] (one sequence, or a ragged batch).
  return batched ? TokenHeadStrides{t.stride(0), t.stride(1), t.stride(2)}
                 : TokenHeadStrides{0, t.stride(0), t.stride(1)};
}

TokenHeadStrides lse_strides_of(const at::Tensor& lse, bool batched) {
  return batched ? TokenHeadStrides{lse.stride(0), lse.stride(1), lse.stride(2)}
                 : TokenHeadStrides{0, lse.stride(0), lse.stride(1)};
}

/// The parameters both ops share: q, out, heads, scale and mask (lse: launch_with).
PrefillParams common_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& out, const PrefillShape& shape,
                            bool causal, int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                            const at::Tensor& sinks, const Descales& descales) {
  const bool batched = q.dim() == 4;
  PrefillParams p{};
  p.q = q.data_ptr();
  p.out = out.data_ptr();
  p.q_strides = strides_of(q, batched);
  p.out_strides = strides_of(out, batched);
  p.num_seqs = static_cast<int32_t>(shape.num_seqs);
  p.qo_len = static_cast<int32_t>(shape.qo_len);
  p.kv_len = static_cast<int32_t>(shape.kv_len);
  p.num_qo_heads = static_cast<int32_t>(shape.num_qo_heads);
  p.group_size = static_cast<int32_t>(shape.num_qo_heads / shape.num_kv_heads);
  p.head_dim_qk = static_cast<int32_t>(shape.head_dim_qk);
  p.head_dim_v = static_cast<int32_t>(shape.head_dim_v);
  p.causal = causal;
  // Past qo_len + kv_len a window hides nothing; clamping keeps the kernel's int math small.
  p.window_left = static_cast<int32_t>(std::min<int64_t>(window_left, int64_t{1} << 30));
  p.chunk_size = static_cast<int32_t>(chunk_size);
  p.chunk_rcp = chunk_size > 0 ? static_cast<float>(1.0 / static_cast<double>(chunk_size)) : 0.f;
  const double log2e = 1.4426950408889634;
  p.soft_cap = static_cast<float>(logits_soft_cap);
  p.pre_cap_scale = logits_soft_cap > 0 ? static_cast<float>(shape.sm_scale / logits_soft_cap) : 0.f;
  p.logit_to_log2 = static_cast<float>(logits_soft_cap > 0 ? log2e : shape.sm_scale * log2e);
  p.sinks = sinks.defined() ? sinks.data_ptr<float>() : nullptr;
  p.q_format = format_of(q.scalar_type());
  p.kv_format = format_of(k.scalar_type());
  p.q_descale = descale_param(descales.q);
  p.k_descale = descale_param(descales.k);
  p.v_descale = descale_param(descales.v);
  return p;
}

/// A 0/1 switch from the environment, read on every call (a process may flip it between calls).
bool env_switch(const char* name, bool unset) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return unset;
  TORCH_CHECK_VALUE(std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0, name, ": expected 0 or 1, got '", env,
                    "'");
  return std::strcmp(env, "1") == 0;
}

/// Whether the wgmma kernel may split its last round of items (tail_split.h). The split depends on
/// how many items the whole batch has, so it changes a sequence's rounding with its neighbours:
/// TORCH_ATTN_BATCH_INVARIANT=1 (serving engines' batch-invariant mode) turns it off, as does
/// TORCH_ATTN_TAIL_SPLIT=0 (comparisons). Nothing else the kernels do depends on the batch.
bool tail_split_allowed() {
  return env_switch("TORCH_ATTN_TAIL_SPLIT", true) && !env_switch("TORCH_ATTN_BATCH_INVARIANT", false);
}

/// A kernel for the call, checked against the GPU's limits: its shared memory, and a grid
/// whose work items the kernel counts in int32.
const Launcher& checked_launcher(const char* op, Backend backend, KernelKind kind, const PrefillShape& shape,
                                 const at::Tensor& q) {
  const Launcher& launcher = pick_launcher(op, backend, kind, shape);
  const bool sm90 = backend == Backend::kSm90;
  const size_t smem = sm90 ? prefill_sm90_smem_bytes(launcher.head_dim_tile, launcher.head_dim_v_tile)
                           : prefill_smem_bytes(launcher.head_dim_tile, kind.fp8_kv);
  const int device_smem_limit = cached_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(q.get_device());
  TORCH_CHECK(smem <= static_cast<size_t>(device_smem_limit), op, ": head dims (", shape.head_dim_qk, ", ",
              shape.head_dim_v, ") need ", smem, " bytes of shared memory per block; this GPU allows ",
              device_smem_limit);
  TORCH_CHECK_VALUE(query_tile_slots(launcher, shape) * shape.num_qo_heads <= INT32_MAX, op,
                    ": q has too many query tiles x heads for one launch (", shape.qo_len, " tokens, ", shape.num_seqs,
                    " sequences, ", shape.num_qo_heads, " heads)");
  return launcher;
}

/// What a call launches, decided from the arguments before anything is allocated or
/// queued, so that every error is raised while nothing has happened yet.
struct LaunchPlan {
  const Launcher* launcher;
  // The mma.sync kernel, where the wgmma kernel may still decline (cudaErrorNotSupported:
  // the copy engine cannot describe q, k or v, or the page size is not a power of two from
  // 8); null where it is forced or is the first choice.
  const Launcher* fallback;
  bool tail_split_allowed;
};

LaunchPlan plan_launch(const char* op, const PrefillShape& shape, KernelKind kind, const at::Tensor& q) {
  BackendChoice choice = pick_backend(q.get_device());
  // fp8 runs on the mma.sync kernel (dequantized on load) everywhere: the wgmma kernel has no fp8 variant yet.
  TORCH_CHECK_VALUE(!kind.fp8_kv || !(choice.forced && choice.backend == Backend::kSm90), op,
                    ": TORCH_ATTN_BACKEND=sm90: the wgmma kernel takes no fp8 inputs yet (they run on sm80)");
  if (kind.fp8_kv) choice = {Backend::kSm80, true};
  // Head dims past the wgmma kernel's widest tiles (up to 512) run on the mma.sync kernel.
  if (choice.backend == Backend::kSm90 && !choice.forced && find_launcher(Backend::kSm90, kind, shape) == nullptr) {
    choice = {Backend::kSm80, true};
  }
  LaunchPlan plan{};
  plan.launcher = &checked_launcher(op, choice.backend, kind, shape, q);
  // Its family loaded now, before anything is allocated or queued (a build, or the refusal to build
  // under graph capture, raises here); the fallback's loads where the wgmma kernel declines.
  launch_fn(*plan.launcher, q.get_device());
  if (choice.backend == Backend::kSm90 && !choice.forced) {
    plan.fallback = &checked_launcher(op, Backend::kSm80, kind, shape, q);
  }
  plan.tail_split_allowed = tail_split_allowed();
  return plan;
}

/// Sizes the grid for the launcher's kernel and launches it on the current stream, writing lse
/// (undefined: into scratch).
cudaError_t launch_with(const Launcher& launcher, bool split_allowed, PrefillParams& p, const PrefillShape& shape,
                        const at::Tensor& q, const at::Tensor& lse) {
  const bool sm90 = launcher.backend == Backend::kSm90;
  p.item_counter = nullptr;  // (a declined wgmma launch may have set it)
  p.lse = lse.defined() ? lse.data_ptr<float>() : nullptr;
  if (lse.defined()) p.lse_strides = lse_strides_of(lse, q.dim() == 4);
  const int64_t block_m = block_m_of(launcher);
  const int64_t slots = query_tile_slots(launcher, shape);
  p.num_q_tile_slots = static_cast<int32_t>(slots);
  // Dense, wgmma kernel: group (sequence, head) pairs so that the K/V of a group's
  // query tiles stays in L2 while they run (see find_work_item); pairs of one KV
  // head's query heads share it. The budget is a quarter of L2: with half of it
  // short sequences still re-read K/V from DRAM (ncu, d128 S=512: 296 MB read for
  // 201 MB of q, k, v; cuDNN reads 201) and a quarter gained 4-10% at S <= 1024;
  // 16 pairs of 8 MB each at 16k tokens (d128, non-causal) overflowed L2: 1-3 pairs
  // per group ran 5-13% faster there (H100, 2026-11-26). Under a causal mask or a window the
  // items' costs differ and the list runs heaviest-first only within a group: at
  // least SMs / 8 pairs per group then, so that the last group's heavy tiles start
  // early enough (groups of 12 pairs cost 4-10% at d128 causal S=4096 B=4). The
  // mma.sync kernel keeps one group: it is compute-bound, and as one CTA per work
  // item it relies on the grid-wide heaviest-first order.
  const int64_t pairs = std::max<int64_t>(1, shape.num_seqs * shape.num_qo_heads);
  const int64_t kv_bytes_per_pair = std::max<int64_t>(
      1, shape.kv_len * (shape.head_dim_qk + shape.head_dim_v) * 2 * shape.num_kv_heads / shape.num_qo_heads);
  const int64_t l2_budget = cached_attribute<cudaDevAttrL2CacheSize>(q.get_device()) / 4;
  const int sms = cached_attribute<cudaDevAttrMultiProcessorCount>(q.get_device());
  // Chunks hide nothing only where every query lies at or after key 0 and one chunk holds every key.
  const bool chunks_hide = p.chunk_size > 0 && (shape.qo_len > shape.kv_len || p.chunk_size < shape.kv_len);
  const bool uneven_items = p.causal || (p.window_left >= 0 && p.window_left < shape.kv_len) || chunks_hide;
  const int64_t min_pairs = uneven_items ? sms / 8 : 1;
  const int64_t grouped = std::clamp<int64_t>(std::max(l2_budget / kv_bytes_per_pair, min_pairs), 1, pairs);
  p.pairs_per_group = static_cast<int32_t>(sm90 ? grouped : pairs);
  // The wgmma kernel is persistent: one CTA per SM (its shared memory allows no second).
  // With more items than CTAs they claim items from a counter that starts at 0 on every
  // launch (a memset on the stream: graph replays zero it again; its own allocation,
  // so that launches on other streams never share it). A memset, not at::zeros: the
  // fill kernel cost 7.7 us of host time per call (H200), 40% of the op's host path.
  p.max_ctas = sm90 ? sms : 0;
  // Items of equal cost (dense, no causal mask or window; T K/V tiles each): where the
  // last round's items (or all of them, fewer than SMs) are at most half as many as
  // the SMs, the wgmma kernel runs them in pieces on the SMs that would idle (tail_split.h).
  const int64_t items = slots * shape.num_qo_heads;
  p.split = no_tail_split(static_cast<int32_t>(items));
  if (sm90 && split_allowed && !shape.ragged && p.block_table == nullptr && !uneven_items) {
    const int64_t block_n = prefill_sm90_block_n(launcher.head_dim_tile, launcher.head_dim_v_tile);
    p.split = plan_tail_split(items, sms, (shape.kv_len + block_n - 1) / block_n);
  }
  const int64_t tail_items = items - p.split.first_item;
  const int64_t consumer_warps = block_m / 16;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  // Scratch (cuda_scratch.h), each part 256-byte aligned: the claim counter (used with more
  // claims than CTAs) and each tail item's arrivals per consumer warp; every piece's out (fp32,
  // the tile's v width) and lse, in its slot; an lse where the caller asked for none.
  const bool counted = sm90 && (p.split.claims > sms || tail_items > 0);
  const int64_t counter_count = counted ? 1 + tail_items * consumer_warps : 0;
  const int64_t partial_slots = tail_items * p.split.pieces;
  const int64_t partial_out_floats = partial_slots * block_m * launcher.head_dim_v_tile;
  const int64_t lse_floats = p.lse == nullptr ? q.numel() / shape.head_dim_qk : 0;
  auto aligned = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  const int64_t partials_at = aligned(counter_count * 4);
  const int64_t lse_at = partials_at + aligned((partial_out_floats + partial_slots * block_m) * 4);
  // Held until the launch is queued: the stream orders the next call's use after it.
  at::Tensor scratch;
  if (lse_at + lse_floats > 0) scratch = launch_scratch(lse_at + lse_floats * 4, q, stream);
  uint8_t* base = scratch.defined() ? scratch.data_ptr<uint8_t>() : nullptr;
  if (counted) {
    int32_t* counters = reinterpret_cast<int32_t*>(base);
    const cudaError_t err = cudaMemsetAsync(counters, 0, counter_count * sizeof(int32_t), stream);
    if (err != cudaSuccess) return err;
    p.item_counter = p.split.claims > sms ? counters : nullptr;
    p.split.arrivals = counters + 1;
  }
  if (tail_items > 0) {
    p.split.partial_out = reinterpret_cast<float*>(base + partials_at);
    p.split.partial_lse = p.split.partial_out + partial_out_floats;
  }
  if (lse_floats > 0) {  // [rows, heads] (batched: [B, S, H]), contiguous
    p.lse = reinterpret_cast<float*>(base + lse_at);
    const int64_t heads = shape.num_qo_heads;
    p.lse_strides = q.dim() == 4 ? TokenHeadStrides{q.size(1) * heads, heads, 1} : TokenHeadStrides{0, heads, 1};
  }
  return launch_fn(launcher, q.get_device())(p, stream);
}

/// Launches the planned kernel, or the mma.sync kernel where the wgmma kernel declines
/// (before launching anything; its counter's memset may be queued already, harmless).
/// lse undefined: the caller wants none.
void launch(const LaunchPlan& plan, PrefillParams& p, const PrefillShape& shape, const at::Tensor& q,
            const at::Tensor& lse) {
  cudaError_t err = launch_with(*plan.launcher, plan.tail_split_allowed, p, shape, q, lse);
  if (err == cudaErrorNotSupported && plan.launcher->backend == Backend::kSm90) {
    TORCH_CHECK_VALUE(plan.fallback != nullptr,
                      "TORCH_ATTN_BACKEND=sm90: the wgmma kernel takes paged caches with pages of 8, 16, 32, ... "
                      "rows and q/k/v that the copy engine can describe; these run on sm80");
    err = launch_with(*plan.fallback, plan.tail_split_allowed, p, shape, q, lse);
  }
  C10_CUDA_CHECK(err);
}

/// The CUDA kernels' own demands on q and the key/value tensors (after the checks every
/// backend shares), then the launch plan: all of it before anything is allocated or queued.
LaunchPlan checked_cuda_plan(const char* op, const PrefillShape& shape, const at::Tensor& q, const at::Tensor& k,
                             std::initializer_list<std::pair<const char*, const at::Tensor&>> key_values,
                             int64_t chunk_size, double logits_soft_cap) {
  TORCH_CHECK_TYPE(q.scalar_type() != at::kFloat, op,
                   ": on CUDA, q, k and v must be float16, bfloat16 or fp8 (float32 runs on CPU only), got ",
                   dtype_name(q.scalar_type()));
  const bool fp8_kv = is_fp8(k.scalar_type());
  // A 16-byte copy holds 16 codes: fp8 rows are whole copies.
  TORCH_CHECK_VALUE(!fp8_kv || (shape.head_dim_qk % 16 == 0 && shape.head_dim_v % 16 == 0), op,
                    ": on CUDA, fp8 inputs need head dims that are multiples of 16, got (", shape.head_dim_qk, ", ",
                    shape.head_dim_v, ")");
  check_cuda_layout(op, "q", q);
  for (const auto& [name, t] : key_values) check_cuda_layout(op, name, t);
  // The kernels build chunked variants without the cap (launch_utils.cuh): no model has both.
  TORCH_CHECK_VALUE(chunk_size == 0 || logits_soft_cap == 0, op,
                    ": on CUDA, chunk_size and logits_soft_cap do not "
                    "combine (the kernels have no variant with both; the CPU path runs it), got chunk_size ",
                    chunk_size, " and logits_soft_cap ", logits_soft_cap);
  const KernelKind kind{shape.out_dtype == at::kBFloat16 ? ScalarKind::kBFloat16 : ScalarKind::kFloat16, fp8_kv};
  return plan_launch(op, shape, kind, q);
}

}  // namespace

namespace {

/// attn::prefill's launch into checked (or freshly allocated) out and lse (undefined: none wanted).
void prefill_cuda_into(const LaunchPlan& plan, const PrefillShape& shape, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const c10::optional<at::Tensor>& qo_indptr,
                       const c10::optional<at::Tensor>& kv_indptr, bool causal, int64_t window_left, int64_t chunk_size,
                       double logits_soft_cap, const at::Tensor& sink_logits, const Descales& descales,
                       const at::Tensor& out, const at::Tensor& lse) {
  if (out.numel() == 0 || shape.num_seqs == 0) return;
  PrefillParams p =
      common_params(q, k, out, shape, causal, window_left, chunk_size, logits_soft_cap, sink_logits, descales);
  const bool batched = q.dim() == 4;
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.k_strides = strides_of(k, batched);
  p.v_strides = strides_of(v, batched);
  p.qo_indptr = shape.ragged ? qo_indptr->data_ptr<int32_t>() : nullptr;
  p.kv_indptr = shape.ragged ? kv_indptr->data_ptr<int32_t>() : nullptr;
  launch(plan, p, shape, q, lse);
}

/// attn::prefill_paged's launch, as above.
void prefill_paged_cuda_into(const LaunchPlan& plan, const PagedShape& paged, const at::Tensor& q,
                             const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& qo_indptr,
                             const at::Tensor& block_table, const at::Tensor& kv_lens, bool causal, int64_t window_left,
                             int64_t chunk_size, double logits_soft_cap, const at::Tensor& sink_logits,
                             const Descales& descales, const at::Tensor& out, const at::Tensor& lse) {
  if (out.numel() == 0 || paged.common.num_seqs == 0) return;
  PrefillParams p = common_params(q, k_cache, out, paged.common, causal, window_left, chunk_size, logits_soft_cap,
                                  sink_logits, descales);
  p.k = k_cache.data_ptr();
  p.v = v_cache.data_ptr();
  // A page plays the part of a batch entry and a slot that of a token; NHD and HND differ only here.
  const int slot_dim = paged.hnd ? 2 : 1, head_dim_index = paged.hnd ? 1 : 2;
  p.k_strides = {k_cache.stride(0), k_cache.stride(slot_dim), k_cache.stride(head_dim_index)};
  p.v_strides = {v_cache.stride(0), v_cache.stride(slot_dim), v_cache.stride(head_dim_index)};
  p.qo_indptr = qo_indptr.data_ptr<int32_t>();
  p.block_table = block_table.data_ptr<int32_t>();
  p.block_table_stride = block_table.stride(0);
  p.kv_lens = kv_lens.data_ptr<int32_t>();
  p.page_size = static_cast<int32_t>(paged.page_size);
  const bool power_of_two = (paged.page_size & (paged.page_size - 1)) == 0;
  p.page_shift = power_of_two ? __builtin_ctzll(static_cast<unsigned long long>(paged.page_size)) : -1;
  p.num_pages = static_cast<int32_t>(paged.num_pages);
  p.max_pages = static_cast<int32_t>(paged.max_pages);
  launch(plan, p, paged.common, q, lse);
}

}  // namespace

PrefillResult prefill_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                           bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                           double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                           const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                           const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PrefillShape shape =
      check_prefill_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  const LaunchPlan plan =
      checked_cuda_plan("attn.prefill", shape, q, k, {{"k", k}, {"v", v}}, chunk_size, logits_soft_cap);
  // Last: for bf16/fp16 sinks this queues a cast.
  const at::Tensor sink_logits = checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads);
  const Descales descales = checked_descales("attn.prefill", quant, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(q.device());
  auto [out, lse] = allocate_prefill_outputs(q, shape);
  prefill_cuda_into(plan, shape, q, k, v, qo_indptr, kv_indptr, causal, window_left, chunk_size, logits_soft_cap,
                    sink_logits, descales, out, lse);
  return {out, lse};
}

void prefill_out_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& qo_indptr, const c10::optional<at::Tensor>& kv_indptr,
                      bool causal, c10::optional<double> sm_scale, int64_t window_left, int64_t chunk_size,
                      double logits_soft_cap, const c10::optional<at::Tensor>& sinks,
                      const c10::optional<at::Tensor>& q_scale, const c10::optional<at::Tensor>& k_scale,
                      const c10::optional<at::Tensor>& v_scale, c10::optional<at::ScalarType> out_dtype,
                      const at::Tensor& out, const c10::optional<at::Tensor>& lse) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PrefillShape shape = check_prefill_out_args(q, k, v, qo_indptr, kv_indptr, sm_scale, window_left, chunk_size,
                                                    logits_soft_cap, quant, sinks, out, lse);
  check_cuda_layout("attn.prefill", "out", out);  // 16-byte stores
  const LaunchPlan plan =
      checked_cuda_plan("attn.prefill", shape, q, k, {{"k", k}, {"v", v}}, chunk_size, logits_soft_cap);
  const at::Tensor sink_logits = checked_sinks("attn.prefill", sinks, q, shape.num_qo_heads);
  const Descales descales = checked_descales("attn.prefill", quant, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(q.device());
  prefill_cuda_into(plan, shape, q, k, v, qo_indptr, kv_indptr, causal, window_left, chunk_size, logits_soft_cap,
                    sink_logits, descales, out, lse.has_value() ? *lse : at::Tensor());
}

PrefillResult prefill_paged_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                                 c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                                 int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                                 const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                                 const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                                 c10::optional<at::ScalarType> out_dtype) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PagedShape paged = check_prefill_paged_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout,
                                                    sm_scale, window_left, chunk_size, logits_soft_cap, quant);
  const LaunchPlan plan = checked_cuda_plan("attn.prefill_paged", paged.common, q, k_cache,
                                            {{"k_cache", k_cache}, {"v_cache", v_cache}}, chunk_size, logits_soft_cap);
  const at::Tensor sink_logits = checked_sinks("attn.prefill_paged", sinks, q, paged.common.num_qo_heads);
  const Descales descales = checked_descales("attn.prefill_paged", quant, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(q.device());
  auto [out, lse] = allocate_prefill_outputs(q, paged.common);
  prefill_paged_cuda_into(plan, paged, q, k_cache, v_cache, qo_indptr, block_table, kv_lens, causal, window_left,
                          chunk_size, logits_soft_cap, sink_logits, descales, out, lse);
  return {out, lse};
}

void prefill_paged_out_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& qo_indptr, const at::Tensor& block_table, const at::Tensor& kv_lens,
                            c10::string_view kv_layout, bool causal, c10::optional<double> sm_scale,
                            int64_t window_left, int64_t chunk_size, double logits_soft_cap,
                            const c10::optional<at::Tensor>& sinks, const c10::optional<at::Tensor>& q_scale,
                            const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                            c10::optional<at::ScalarType> out_dtype, const at::Tensor& out,
                            const c10::optional<at::Tensor>& lse) {
  const QuantArgs quant{q_scale, k_scale, v_scale, out_dtype};
  const PagedShape paged =
      check_prefill_paged_out_args(q, k_cache, v_cache, qo_indptr, block_table, kv_lens, kv_layout, sm_scale,
                                   window_left, chunk_size, logits_soft_cap, quant, sinks, out, lse);
  check_cuda_layout("attn.prefill_paged", "out", out);  // 16-byte stores
  const LaunchPlan plan = checked_cuda_plan("attn.prefill_paged", paged.common, q, k_cache,
                                            {{"k_cache", k_cache}, {"v_cache", v_cache}}, chunk_size, logits_soft_cap);
  const at::Tensor sink_logits = checked_sinks("attn.prefill_paged", sinks, q, paged.common.num_qo_heads);
  const Descales descales = checked_descales("attn.prefill_paged", quant, /*check_values=*/false);
  const c10::cuda::CUDAGuard device_guard(q.device());
  prefill_paged_cuda_into(plan, paged, q, k_cache, v_cache, qo_indptr, block_table, kv_lens, causal, window_left,
                          chunk_size, logits_soft_cap, sink_logits, descales, out,
                          lse.has_value() ? *lse : at::Tensor());
}

}  // namespace torch_attn
