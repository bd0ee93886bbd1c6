// Writing one warp's rows of out and lse, shared by the mma.sync and wgmma kernels.
#pragma once
#include <cstdint>
#include "mma.cuh"
#include "params.h"
#include "work_item.cuh"

namespace torch_attn {

/// Writes this warp's 16 * kMFrags rows of out, starting at row warp_row0 of the
/// query tile, and their LSE. O goes through the warp's own rows of the Q tile in
/// shared memory (any layout with QTile::offset) so that global stores are 16-byte
/// and coalesced. Only rows in [0, qo_len) and columns < head_dim are written. The caller
/// guarantees that nothing reads or writes those Q rows any more.
template <class QTile, typename DType, int kMFrags, int kNFragsO>
__device__ __forceinline__ void store_warp_rows(const PrefillParams& p, const WorkItem& w, DType* q_smem,
                                                int warp_row0, int lane, int chunks_valid,
                                                const float (&o)[kMFrags][kNFragsO][4],
                                                const float (&lse)[2 * kMFrags]) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
    for (int nd = 0; nd < kNFragsO; ++nd)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = warp_row0 + mi * 16 + g + 8 * half;
        *reinterpret_cast<uint32_t*>(q_smem + QTile::offset(row, nd * 8 + 2 * t)) =
            pack_pair<DType>(o[mi][nd][2 * half], o[mi][nd][2 * half + 1]);
      }
  __syncwarp();
  DType* out = static_cast<DType*>(p.out) + w.seq * p.out_strides.batch +
               static_cast<int64_t>(w.q_start + w.q_row0) * p.out_strides.token + w.qo_head * p.out_strides.head;
  constexpr int kWarpRows = kMFrags * 16;
#pragma unroll
  for (int i = 0; i < kWarpRows * QTile::kChunksPerRow / 32; ++i) {
    const int idx = lane + i * 32;
    const int row = warp_row0 + idx / QTile::kChunksPerRow;
    const int chunk = idx % QTile::kChunksPerRow;
    const int seq_row = w.q_row0 + row;
    if (seq_row >= 0 && seq_row < w.qo_len && chunk < chunks_valid) {
      *reinterpret_cast<uint4*>(out + row * p.out_strides.token + chunk * 8) =
          *reinterpret_cast<const uint4*>(q_smem + QTile::offset(row, chunk * 8));
    }
  }
  if (t == 0) {
    float* lse_out = p.lse + w.seq * p.lse_strides.batch + static_cast<int64_t>(w.q_start) * p.lse_strides.token +
                     w.qo_head * p.lse_strides.head;
#pragma unroll
    for (int r = 0; r < 2 * kMFrags; ++r) {
      const int row = w.q_row0 + warp_row0 + (r / 2) * 16 + g + 8 * (r % 2);
      if (row >= 0 && row < w.qo_len) lse_out[row * p.lse_strides.token] = lse[r];
    }
  }
}

}  // namespace torch_attn
