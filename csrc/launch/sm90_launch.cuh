// Definition of launch_prefill_sm90; included only by the sm90 instantiation files.
#pragma once
#include "kernels/sm90/prefill_kernel.cuh"
#include "launch/launch_utils.cuh"
#include "launch/prefill_launch.h"
#include "launch/tensor_map_encode.h"

namespace torch_attn {

template <ScalarKind kKind, int kHeadDimTile, int kHeadDimVTile>
cudaError_t launch_prefill_sm90(const PrefillParams& params, cudaStream_t stream) {
  using Traits = PrefillSm90Traits<DTypeOf<kKind>, kHeadDimTile, kHeadDimVTile>;
  // Tensor maps for the copy engine.
  Sm90TensorMaps maps{};
  constexpr bool kBf16 = kKind == ScalarKind::kBFloat16;
  const int kv_heads = params.num_qo_heads / params.group_size;
  const bool paged = params.block_table != nullptr;
  const int batch = params.qo_indptr != nullptr ? 1 : params.num_seqs;  // ragged: one sequence of all tokens
  // Each map has its tensor's own head dim: the copy engine zero-fills the tile's columns past it.
  const bool q_encoded = encode_tensor_map(&maps.q, params.q, kBf16, params.head_dim_qk, params.num_qo_heads,
                                           params.qo_len, batch, params.q_strides, Traits::kBlockM);
  auto encode_kv = [&](int tokens, int kv_batch, int box_rows) {
    return encode_tensor_map(&maps.k, params.k, kBf16, params.head_dim_qk, kv_heads, tokens, kv_batch, params.k_strides,
                             box_rows) &&
           encode_tensor_map(&maps.v, params.v, kBf16, params.head_dim_v, kv_heads, tokens, kv_batch, params.v_strides,
                             box_rows);
  };
  bool encoded = q_encoded;
  if (paged) {
    // One box per page: whole 8-row swizzle atoms, and pages that tile a K/V tile (or
    // tiles that tile a page): powers of two from 8 (page_shift >= 3; -1 for others).
    const int page = params.page_size;
    maps.kv_rows_per_box = page < Traits::kBlockN ? page : Traits::kBlockN;
    encoded = encoded && params.page_shift >= 3 && encode_kv(page, params.num_pages, maps.kv_rows_per_box);
  } else {
    // Without keys (kv_len = 0 everywhere) the kernel loads no K/V tile: no maps needed.
    encoded = encoded && (params.kv_len == 0 || encode_kv(params.kv_len, batch, Traits::kBlockN));
  }
  if (!encoded) return cudaErrorNotSupported;       // the caller runs the mma.sync kernel instead
  static std::atomic<uint64_t> smem_configured{0};  // one per (dtype, widths) instantiation
  return launch_variant(
      smem_configured, Traits::kThreads, Traits::kSmemBytes, params, stream,
      [](auto soft_cap, auto paged, auto chunked) {
        return prefill_sm90_kernel<Traits, decltype(soft_cap)::value, decltype(paged)::value, decltype(chunked)::value>;
      },
      maps);
}

}  // namespace torch_attn

#define TORCH_ATTN_INSTANTIATE_PREFILL_SM90(KIND, WIDTH, V_WIDTH)                                     \
  template cudaError_t torch_attn::launch_prefill_sm90<torch_attn::ScalarKind::KIND, WIDTH, V_WIDTH>( \
      const torch_attn::PrefillParams&, cudaStream_t);
