// Which (sequence, query tile, head) a CTA works on. The grid is sized from
// tensor shapes alone, so the host never reads device data (CUDA-graph safe).
#pragma once
#include <cstdint>
#include "params.h"

namespace torch_attn {

struct WorkItem {
  int seq;
  int qo_head;
  int q_row0;    // first query row of the tile, within the sequence
  int qo_len;    // this sequence's lengths
  int kv_len;
  int q_start;   // the sequence's first row in a ragged q / k (0 when dense)
  int kv_start;
};

__device__ __forceinline__ int clamp_row(int32_t row, int rows) { return row < 0 ? 0 : (row > rows ? rows : row); }

/// Finds the work item of this CTA. Returns false for the spare CTAs of a ragged
/// grid (its size is an upper bound on the number of tiles).
///
/// Order: heads vary fastest, then the query tiles of every sequence counted from
/// the last one. Under a causal mask the last tile of a sequence has the most
/// keys, so the heaviest CTAs start first and short ones fill the tail.
template <int kBlockM>
__device__ __forceinline__ bool find_work_item(const PrefillParams& p, WorkItem& w) {
  const int slot = static_cast<int>(blockIdx.x) / p.num_qo_heads;
  w.qo_head = static_cast<int>(blockIdx.x) % p.num_qo_heads;
  if (p.qo_indptr == nullptr) {  // dense: every sequence has the same tiles
    const int tiles_per_seq = (p.qo_len + kBlockM - 1) / kBlockM;
    w.seq = slot % p.num_seqs;
    w.q_row0 = (tiles_per_seq - 1 - slot / p.num_seqs) * kBlockM;
    w.qo_len = p.qo_len;
    w.kv_len = p.kv_len;
    w.q_start = 0;
    w.kv_start = 0;
    return true;
  }
  // Ragged: walk the sequences 32 at a time; each lane counts one sequence's
  // tiles and a warp prefix sum finds the sequence that holds tile `slot`.
  // Every warp does the same walk, so no shared memory or barrier is needed.
  const int lane = threadIdx.x % 32;
  int remaining = slot;
  for (int base = 0; base < p.num_seqs; base += 32) {
    const int b = base + lane;
    int q_begin = 0, q_len = 0;
    if (b < p.num_seqs) {
      q_begin = clamp_row(p.qo_indptr[b], p.qo_len);
      const int q_end = clamp_row(p.qo_indptr[b + 1], p.qo_len);
      q_len = q_end > q_begin ? q_end - q_begin : 0;
    }
    const int tiles = (q_len + kBlockM - 1) / kBlockM;
    int inclusive = tiles;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    const unsigned holds = __ballot_sync(0xffffffffu, remaining < inclusive);
    if (holds != 0) {
      const int owner = __ffs(holds) - 1;
      const int tile_from_end = remaining - __shfl_sync(0xffffffffu, inclusive - tiles, owner);
      const int owner_tiles = __shfl_sync(0xffffffffu, tiles, owner);
      w.seq = base + owner;
      w.qo_len = __shfl_sync(0xffffffffu, q_len, owner);
      w.q_start = __shfl_sync(0xffffffffu, q_begin, owner);
      w.q_row0 = (owner_tiles - 1 - tile_from_end) * kBlockM;
      const int kv_begin = clamp_row(p.kv_indptr[w.seq], p.kv_len);
      const int kv_end = clamp_row(p.kv_indptr[w.seq + 1], p.kv_len);
      w.kv_start = kv_begin;
      w.kv_len = kv_end > kv_begin ? kv_end - kv_begin : 0;
      return true;
    }
    remaining -= __shfl_sync(0xffffffffu, inclusive, 31);
  }
  return false;
}

}  // namespace torch_attn
