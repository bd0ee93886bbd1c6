// Writing one warp's rows of out and lse, shared by the mma.sync and wgmma kernels.
#pragma once
#include <cstdint>
#include "kernels/common/fast_math.cuh"
#include "kernels/common/params.h"
#include "kernels/common/work_item.cuh"

namespace torch_attn {

/// One 16-byte global store. (A uint4 kept in an array and stored through a pointer
/// cast was split into four 4-byte stores by the front end.)
__device__ __forceinline__ void store_16_bytes(void* dst, const uint4& v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(__cvta_generic_to_global(dst)), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

/// Writes this warp's 16 * kMFrags rows of out, starting at row warp_row0 of the
/// query tile, and their LSE. O goes through the warp's own rows of a staging tile in
/// shared memory (StageTile: rows numbered as the query tile's, StageTile::kHeadDim
/// columns at a time) so that global stores are 16-byte and coalesced: the Q tile
/// itself where it has nothing left to hold, or a tile of its own (the wgmma kernel
/// with one Q stage). Only rows in [0, qo_len) and columns < head_dim are written.
/// The caller guarantees that nothing else reads or writes those staging rows; they
/// may be rewritten once this returns. Warps that split a row's columns (the mma.sync kernel at
/// width 512) pass their first column of out, out_col0, and let one of them write lse.
/// Tile rows, columns and lanes are unsigned here: the compiler cannot tell they are
/// never negative, and signed divisions and remainders cost sign fix-ups (the epilogue
/// took ~1.5 us per work item at d128 on the wgmma kernel, a quarter of a short item).
template <class StageTile, typename DType, int kMFrags, int kNFragsO>
__device__ __forceinline__ void store_warp_rows(const PrefillParams& p, const WorkItem& w, DType* stage, int warp_row0,
                                                int lane, int chunks_valid, const float (&o)[kMFrags][kNFragsO][4],
                                                const float (&lse)[2 * kMFrags], int out_col0 = 0,
                                                bool store_lse = true) {
  const unsigned g = static_cast<unsigned>(lane) / 4, t = static_cast<unsigned>(lane) % 4;
  const unsigned row0 = static_cast<unsigned>(warp_row0);
  DType* out = static_cast<DType*>(p.out) + w.seq * p.out_strides.batch +
               static_cast<int64_t>(w.q_start + w.q_row0) * p.out_strides.token + w.qo_head * p.out_strides.head +
               out_col0;
  constexpr int kWarpRows = kMFrags * 16;
  constexpr int kChunks = StageTile::kChunksPerRow;       // 16-byte chunks of a row per pass
  constexpr int kFragsPerPass = StageTile::kHeadDim / 8;  // n8 fragments of O per pass
  static_assert(kNFragsO % kFragsPerPass == 0, "whole passes over O's columns");
  const unsigned qo_len = static_cast<unsigned>(w.qo_len);
  auto in_sequence = [&](unsigned tile_row) {
    return static_cast<unsigned>(w.q_row0 + static_cast<int>(tile_row)) < qo_len;
  };
#pragma unroll
  for (int pass = 0; pass < kNFragsO / kFragsPerPass; ++pass) {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nd = 0; nd < kFragsPerPass; ++nd)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const unsigned row = row0 + mi * 16 + g + 8 * half;
          const int frag = pass * kFragsPerPass + nd;
          *reinterpret_cast<uint32_t*>(stage + StageTile::offset(row, nd * 8 + 2 * t)) =
              pack_pair<DType>(o[mi][frag][2 * half], o[mi][frag][2 * half + 1]);
        }
    __syncwarp();
    // 16-byte chunk idx of the warp's rows: lane + 32 i. Where a row has a divisor of 32
    // chunks, a lane keeps its chunk column and steps down 32 / kChunks rows at a time:
    // it reads all its chunks first (the warp's own rows: always in bounds), so that the
    // shared-memory loads overlap instead of each store waiting for its own, then stores
    // through an out pointer advancing by a fixed stride (64-bit index math per chunk
    // cost ~15 instructions each). A row is stored when 0 <= its sequence row < qo_len:
    // one unsigned compare.
    const int first_chunk = pass * kChunks;  // of the row in out
    if constexpr (32 % kChunks == 0) {
      constexpr int kRowsPerPass = 32 / kChunks, kLoads = kWarpRows / kRowsPerPass;
      const unsigned chunk = static_cast<unsigned>(lane) % kChunks;
      const unsigned first_row = row0 + static_cast<unsigned>(lane) / kChunks;
      uint4 chunks[kLoads];
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        chunks[i] = *reinterpret_cast<const uint4*>(stage + StageTile::offset(first_row + i * kRowsPerPass, chunk * 8));
      }
      if (first_chunk + static_cast<int>(chunk) < chunks_valid) {
        DType* dst = out + static_cast<int64_t>(first_row) * p.out_strides.token + (first_chunk + chunk) * 8;
        const int64_t step = int64_t{kRowsPerPass} * p.out_strides.token;
#pragma unroll
        for (int i = 0; i < kLoads; ++i, dst += step) {
          if (in_sequence(first_row + i * kRowsPerPass)) store_16_bytes(dst, chunks[i]);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < kWarpRows * kChunks / 32; ++i) {
        const unsigned idx = static_cast<unsigned>(lane) + i * 32;
        const unsigned row = row0 + idx / kChunks, chunk = idx % kChunks;
        if (first_chunk + static_cast<int>(chunk) < chunks_valid && in_sequence(row)) {
          *reinterpret_cast<uint4*>(out + static_cast<int64_t>(row) * p.out_strides.token + (first_chunk + chunk) * 8) =
              *reinterpret_cast<const uint4*>(stage + StageTile::offset(row, chunk * 8));
        }
      }
    }
    __syncwarp();  // every lane's reads of the staging rows are done: the next pass (or caller) may rewrite them
  }
  if (t == 0 && store_lse) {
    float* lse_out = p.lse + w.seq * p.lse_strides.batch + static_cast<int64_t>(w.q_start) * p.lse_strides.token +
                     w.qo_head * p.lse_strides.head;
#pragma unroll
    for (int r = 0; r < 2 * kMFrags; ++r) {
      const unsigned row = row0 + (r / 2) * 16 + g + 8 * (r % 2);
      if (in_sequence(row)) lse_out[(w.q_row0 + static_cast<int>(row)) * p.lse_strides.token] = lse[r];
    }
  }
}

}  // namespace torch_attn
