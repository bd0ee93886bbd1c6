// What the launchers of both kernels share: the element type of a ScalarKind and
// the one-time shared-memory opt-in.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include "launch/prefill_launch.h"

namespace torch_attn {

template <ScalarKind kKind>
using DTypeOf = std::conditional_t<kKind == ScalarKind::kBFloat16, __nv_bfloat16, __half>;

/// Raises the dynamic shared-memory limit of `kernels` past the 48 KB default,
/// once per device and per instantiation of the caller (`configured` is the
/// caller's own static): the attribute is per device and per kernel, and setting
/// it on every launch would cost time on the hot path.
template <class... Kernels>
cudaError_t allow_smem_once(std::atomic<uint64_t>& configured, size_t bytes, Kernels... kernels) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  for (auto kernel : {kernels...}) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
  }
  configured.fetch_or(bit, std::memory_order_acq_rel);
  return cudaSuccess;
}

/// Launches the variant of a kernel that `params` needs: soft cap or not (a tanh per
/// score), paged cache or not (addresses), chunks or not (per-row chunk bounds, which
/// made the other variants spill). kernel_of(soft_cap, paged, chunked), each a
/// std::bool_constant, names a variant; chunks come without a soft cap (the host
/// refuses the pair), so six are built. One CTA per query-tile slot and head
/// (params.split.claims: the wgmma kernel may split some of them into pieces).
/// params.max_ctas > 0: a persistent grid of at most that many CTAs. `extra`: further
/// kernel arguments after the parameters.
template <class KernelOf, class... Extra>
cudaError_t launch_variant(std::atomic<uint64_t>& smem_configured, int threads, size_t smem_bytes,
                           const PrefillParams& params, cudaStream_t stream, KernelOf kernel_of,
                           const Extra&... extra) {
  using Yes = std::true_type;
  using No = std::false_type;
  const auto with_cap = kernel_of(Yes{}, No{}, No{}), without_cap = kernel_of(No{}, No{}, No{});
  const auto paged_with_cap = kernel_of(Yes{}, Yes{}, No{}), paged_without_cap = kernel_of(No{}, Yes{}, No{});
  const auto chunked = kernel_of(No{}, No{}, Yes{}), paged_chunked = kernel_of(No{}, Yes{}, Yes{});
  const cudaError_t err = allow_smem_once(smem_configured, smem_bytes, with_cap, without_cap, paged_with_cap,
                                          paged_without_cap, chunked, paged_chunked);
  if (err != cudaSuccess) return err;
  const bool soft_cap = params.soft_cap > 0.f, paged = params.block_table != nullptr;
  const auto kernel = params.chunk_size > 0 ? (paged ? paged_chunked : chunked)
                      : paged               ? (soft_cap ? paged_with_cap : paged_without_cap)
                                            : (soft_cap ? with_cap : without_cap);
  // A CTA per claim (a work item, or a piece of the wgmma kernel's tail: tail_split.h).
  const unsigned claims = static_cast<unsigned>(params.split.claims);
  const unsigned max_ctas = static_cast<unsigned>(params.max_ctas);
  const dim3 grid(max_ctas > 0 && max_ctas < claims ? max_ctas : claims);
  kernel<<<grid, threads, smem_bytes, stream>>>(params, extra...);
  return cudaGetLastError();
}

}  // namespace torch_attn
