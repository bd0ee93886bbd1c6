// Definition of launch_prefill_sm90; included only by the sm90 instantiation files.
#pragma once
#include "launch_utils.cuh"
#include "prefill_launch.h"
#include "prefill_sm90_kernel.cuh"

namespace torch_attn {

template <ScalarKind kKind, int kHeadDimTile>
cudaError_t launch_prefill_sm90(const PrefillParams& params, cudaStream_t stream) {
  using Traits = PrefillSm90Traits<DTypeOf<kKind>, kHeadDimTile>;
  // Contiguous q/k/v: tensor maps for the copy engine (paged caches use cp.async).
  Sm90TensorMaps maps{};
  if (params.block_table == nullptr) {
    constexpr bool kBf16 = kKind == ScalarKind::kBFloat16;
    const int batch = params.qo_indptr != nullptr ? 1 : params.num_seqs;  // ragged: one sequence of all tokens
    const int kv_heads = params.num_qo_heads / params.group_size;
    // Without keys (kv_len = 0 everywhere) the kernel loads no K/V tile: no maps needed.
    const bool has_keys = params.kv_len > 0;
    const bool encoded =
        encode_tensor_map(&maps.q, params.q, kBf16, params.head_dim, params.num_qo_heads, params.qo_len, batch,
                          params.q_strides, Traits::kBlockM) &&
        (!has_keys || (encode_tensor_map(&maps.k, params.k, kBf16, params.head_dim, kv_heads, params.kv_len, batch,
                                         params.k_strides, Traits::kBlockN) &&
                       encode_tensor_map(&maps.v, params.v, kBf16, params.head_dim, kv_heads, params.kv_len, batch,
                                         params.v_strides, Traits::kBlockN)));
    if (!encoded) return cudaErrorNotSupported;  // the caller runs the mma.sync kernel instead
  }
  // Persistent: one CTA per multiprocessor (the shared memory allows no second one).
  int sms = 0;
  const cudaError_t err = multiprocessor_count(sms);
  if (err != cudaSuccess) return err;
  static std::atomic<uint64_t> smem_configured{0};  // one per (dtype, width) instantiation
  return launch_variant(smem_configured, Traits::kThreads, Traits::kSmemBytes, static_cast<unsigned>(sms), params, stream,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/true, /*kPaged=*/false>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/false, /*kPaged=*/false>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/true, /*kPaged=*/true>,
                        prefill_sm90_kernel<Traits, /*kSoftCap=*/false, /*kPaged=*/true>, maps);
}

}  // namespace torch_attn

#define TORCH_ATTN_INSTANTIATE_PREFILL_SM90(KIND, WIDTH)                                  \
  template cudaError_t torch_attn::launch_prefill_sm90<torch_attn::ScalarKind::KIND, WIDTH>( \
      const torch_attn::PrefillParams&, cudaStream_t);
