// Definition of launch_prefill; included only by the instantiation files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <atomic>
#include "prefill_kernel.cuh"
#include "prefill_launch.h"

namespace torch_attn {

template <ScalarKind kKind>
using DTypeOf = std::conditional_t<kKind == ScalarKind::kBFloat16, __nv_bfloat16, __half>;

/// Raises the kernel's dynamic shared-memory limit past the 48 KB default, once
/// per device (the attribute is per device; setting it on every launch costs time).
template <class Kernel>
cudaError_t allow_smem_once(Kernel kernel, size_t bytes) {
  static std::atomic<uint64_t> configured_devices{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (configured_devices.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

template <ScalarKind kKind, int kHeadDimTile>
cudaError_t launch_prefill(const PrefillParams& params, cudaStream_t stream) {
  using Traits = PrefillTraits<DTypeOf<kKind>, kHeadDimTile>;
  auto kernel = params.soft_cap > 0.f ? prefill_kernel<Traits, /*kSoftCap=*/true>
                                      : prefill_kernel<Traits, /*kSoftCap=*/false>;
  const cudaError_t err = allow_smem_once(kernel, Traits::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(params.num_q_tile_slots) * static_cast<unsigned>(params.num_qo_heads));
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace torch_attn

#define TORCH_ATTN_INSTANTIATE_PREFILL(KIND, WIDTH) \
  template cudaError_t torch_attn::launch_prefill<torch_attn::ScalarKind::KIND, WIDTH>(const torch_attn::PrefillParams&, cudaStream_t);
