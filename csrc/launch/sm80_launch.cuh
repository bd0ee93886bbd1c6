// Definition of launch_prefill; included only by the instantiation files.
#pragma once
#include "kernels/sm80/prefill_kernel.cuh"
#include "launch/launch_utils.cuh"
#include "launch/prefill_launch.h"

namespace torch_attn {

template <ScalarKind kKind, int kHeadDimTile, bool kFp8KV>
cudaError_t launch_prefill(const PrefillParams& params, cudaStream_t stream) {
  using Traits = PrefillTraits<DTypeOf<kKind>, kHeadDimTile, kFp8KV>;
  static std::atomic<uint64_t> smem_configured{0};  // one per (dtype, width, fp8) instantiation
  return launch_variant(
      smem_configured, Traits::kThreads, Traits::kSmemBytes, params, stream,
      [](auto soft_cap, auto paged, auto chunked) {
        return prefill_kernel<Traits, decltype(soft_cap)::value, decltype(paged)::value, decltype(chunked)::value>;
      });
}

}  // namespace torch_attn

#define TORCH_ATTN_INSTANTIATE_PREFILL(KIND, WIDTH, FP8_KV)                                     \
  template cudaError_t torch_attn::launch_prefill<torch_attn::ScalarKind::KIND, WIDTH, FP8_KV>( \
      const torch_attn::PrefillParams&, cudaStream_t);
