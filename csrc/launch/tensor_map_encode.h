// Host-side encoding of the copy engine's tensor maps (cuTensorMapEncodeTiled, through
// the runtime's driver entry point: no link against libcuda).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <cstdint>
#include "kernels/common/params.h"

namespace torch_attn {

/// Encodes a 4-d map (dim, head, token, batch) of a 16-bit tensor, boxes of 64
/// columns x 1 head x `box_rows` tokens, 128-byte swizzle (the wgmma tiles' layout,
/// sm90/swizzled_tile.cuh). Boxes that reach past the view's tokens or dims are
/// zero-filled by the copy engine: the rows past a dense sequence and the head-dim
/// padding. (Inside a ragged batch the next sequence's rows are in bounds: the
/// kernel never lets the copy engine fill a V tile that runs past its sequence.)
inline bool encode_tensor_map(CUtensorMap* map, const void* base, bool bf16, int head_dim, int heads, int tokens,
                              int batch, const TokenHeadStrides& strides, int box_rows) {
  using Encode = PFN_cuTensorMapEncodeTiled_v12000;
  static const Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess ? reinterpret_cast<Encode>(fn) : nullptr;
  }();
  if (encode == nullptr || tokens <= 0 || batch <= 0) return false;
  // Strides of dimensions of size 1 are never used; any multiple of 16 bytes will do.
  auto stride_bytes = [](int64_t elements, int size) { return size > 1 ? static_cast<cuuint64_t>(elements) * 2 : 16; };
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(tokens), static_cast<cuuint64_t>(batch)};
  const cuuint64_t byte_strides[3] = {stride_bytes(strides.head, heads), stride_bytes(strides.token, tokens),
                                      stride_bytes(strides.batch, batch)};
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                const_cast<void*>(base), dims, byte_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace torch_attn
