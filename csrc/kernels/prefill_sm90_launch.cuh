// Definition of launch_prefill_sm90; included only by the sm90 instantiation files.
#pragma once
#include "launch_utils.cuh"
#include "prefill_launch.h"
#include "prefill_sm90_kernel.cuh"

namespace torch_attn {

template <ScalarKind kKind, int kHeadDimTile>
cudaError_t launch_prefill_sm90(const PrefillParams& params, cudaStream_t stream) {
  using Traits = PrefillSm90Traits<DTypeOf<kKind>, kHeadDimTile>;
  static std::atomic<uint64_t> smem_configured{0};  // one per (dtype, width) instantiation
  return launch_variant(smem_configured, Traits::kThreads, Traits::kSmemBytes, params, stream,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/true, /*kPaged=*/false>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/false, /*kPaged=*/false>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/true, /*kPaged=*/true>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/false, /*kPaged=*/true>);
}

}  // namespace torch_attn

#define TORCH_ATTN_INSTANTIATE_PREFILL_SM90(KIND, WIDTH)                                  \
  template cudaError_t torch_attn::launch_prefill_sm90<torch_attn::ScalarKind::KIND, WIDTH>( \
      const torch_attn::PrefillParams&, cudaStream_t);
