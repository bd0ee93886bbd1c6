// The copy engine (TMA) on the device: the wgmma kernel's tensor maps, and the copy of one
// box into shared memory (launch/tensor_map_encode.h encodes the maps on the host).
#pragma once
#include <cuda.h>
#include <cstdint>
#include "kernels/common/smem_address.cuh"
#include "kernels/sm90/mbarrier.cuh"

namespace torch_attn {

/// The wgmma kernel's maps of q, k and v. Paged caches: k and v map the cache as
/// (dim, head, slot, page), and kv_rows_per_box is the rows of one box (a page, or a
/// tile of a larger page).
struct Sm90TensorMaps {
  CUtensorMap q, k, v;
  int32_t kv_rows_per_box;
};

/// cp.async.bulk.tensor: one box at coordinates (col, head, token, batch) into
/// shared memory; its bytes complete on `bar`.
__device__ __forceinline__ void tma_load_box(void* smem_dst, const CUtensorMap& map, int col, int head, int token,
                                             int batch, MBarrier& bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_address(smem_dst)),
      "l"(&map), "r"(col), "r"(head), "r"(token), "r"(batch), "r"(smem_address(&bar.word))
      : "memory");
}

}  // namespace torch_attn
