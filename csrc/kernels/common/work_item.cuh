// Which (sequence, query tile, head) a CTA works on. The grid is sized from
// tensor shapes alone, so the host never reads device data (CUDA-graph safe).
#pragma once
#include <climits>
#include <cstdint>
#include "kernels/common/mask.cuh"
#include "kernels/common/params.h"

namespace torch_attn {

struct WorkItem {
  int seq;
  int qo_head;
  int q_row0;  // first query row of the tile, within the sequence (< 0: the tile starts before it)
  int qo_len;  // this sequence's lengths
  int kv_len;
  int q_start;  // the sequence's first row in a ragged q / k (0 when dense)
  int kv_start;
  // Piece tail_piece of tail item tail_item (the wgmma kernel's tail split,
  // tail_split.h): the item's K/V tiles [kv_tile0, kv_tile0 + kv_tiles) only (worked
  // out once, by the producer). tail_item < 0: the whole item.
  int tail_item = -1;
  int tail_piece = 0;
  int kv_tile0 = 0;
  int kv_tiles = 0;
  // The wgmma kernel's consumer groups: 8 bits per group (group g at bit 8 g) saying
  // which of the CTA's K/V tiles the group's rows see (Sm90Item::group_skips).
  int group_skips = 0;

  /// Query rows of this tile inside the sequence (the last tile may run past its end).
  template <int kBlockM>
  __device__ __forceinline__ int query_rows() const {
    return min(kBlockM, qo_len - q_row0);
  }

  /// The rows [row_begin, row_end) of the tile that lie inside the sequence: tiles
  /// aligned to the sequence's end (find_work_item) may start before row 0.
  __device__ __forceinline__ int row_begin() const { return max(q_row0, 0); }
  template <int kBlockM>
  __device__ __forceinline__ int row_end() const {
    return min(q_row0 + kBlockM, qo_len);
  }

  /// The mark after a CTA's last item in the wgmma kernel's hand-over of items.
  __device__ __forceinline__ static WorkItem end_of_list() {
    WorkItem w{};
    w.seq = -1;
    return w;
  }
  __device__ __forceinline__ bool is_end_of_list() const { return seq < 0; }
  __device__ __forceinline__ bool is_tail_piece() const { return tail_item >= 0; }

  /// A paged sequence's row of the block table.
  __device__ __forceinline__ const int32_t* block_table_row(const PrefillParams& p) const {
    return p.block_table + seq * p.block_table_stride;
  }

  /// Which keys this item's queries see. Chunks only in the kernels' chunked variants: the
  /// chunk arithmetic per row in every variant made ptxas spill (hoisted 64-bit positions).
  template <bool kChunked>
  __device__ __forceinline__ VisibleKeys visible_keys(const PrefillParams& p) const {
    VisibleKeys keys{kv_len, kv_len - qo_len, p.causal, p.window_left, 0, 0, 0.f};
    if constexpr (kChunked) {  // chunk_size > 0 here (launch_variant)
      keys.chunk_size = p.chunk_size;
      keys.chunk_rcp = p.chunk_rcp;
      keys.chunk_base = VisibleKeys::chunk_base_of(static_cast<int64_t>(q_row0) + kv_len - qo_len, p.chunk_size);
    }
    return keys;
  }
};

__device__ __forceinline__ int clamp_row(int32_t row, int rows) { return row < 0 ? 0 : (row > rows ? rows : row); }

/// The first row of query tile `tile_from_end` (0: the last) of a sequence of qo_len
/// rows in `tiles` tiles. Start-aligned, the last tile may run past the sequence's end;
/// end-aligned, the first tile may start before row 0 (its rows there are never
/// stored): under a causal mask the partial tile is then the one that sees the fewest
/// keys rather than the one that sees them all (d64, BM 192, S 1024: 32 -> 27 K/V tile
/// steps per sequence and head).
template <int kBlockM, bool kEndAligned>
__device__ __forceinline__ int first_row_of_tile(int qo_len, int tiles, int tile_from_end) {
  return kEndAligned ? qo_len - (tile_from_end + 1) * kBlockM : (tiles - 1 - tile_from_end) * kBlockM;
}

/// One lane's view of ragged sequence b (b >= num_seqs: an empty one).
template <int kBlockM>
struct LaneSequence {
  int q_begin = 0, q_len = 0, tiles = 0;

  __device__ __forceinline__ LaneSequence(const PrefillParams& p, int b) {
    if (b < p.num_seqs) {
      q_begin = clamp_row(p.qo_indptr[b], p.qo_len);
      q_len = max(0, clamp_row(p.qo_indptr[b + 1], p.qo_len) - q_begin);
    }
    tiles = (q_len + kBlockM - 1) / kBlockM;
  }

  /// Hands the owner lane's sequence (number seq_base + owner) and its tile
  /// `tile_from_end` (0: the last) to every lane.
  template <bool kEndAligned>
  __device__ __forceinline__ void assign(WorkItem& w, int seq_base, int owner, int tile_from_end) const {
    w.seq = seq_base + owner;
    w.qo_len = __shfl_sync(0xffffffffu, q_len, owner);
    w.q_start = __shfl_sync(0xffffffffu, q_begin, owner);
    w.q_row0 = first_row_of_tile<kBlockM, kEndAligned>(w.qo_len, __shfl_sync(0xffffffffu, tiles, owner), tile_from_end);
  }
};

/// Finds work item `item` (one CTA's work: a query tile of one head). Returns false
/// for the spare items of a ragged batch (their count is an upper bound on the tiles),
/// which all come after the real ones.
///
/// Order: query tiles are counted from the end of their sequence; under a causal
/// mask the last tile of a sequence has the most keys, so the heaviest work starts
/// first and short work fills the tail.
///   Dense: the (sequence, head) pairs form groups of p.pairs_per_group; a group's
///   tiles run together (tile-from-end major, heads fastest), so the K/V they all
///   read stays in L2 (the host sizes the groups from the L2 size), then the next
///   group's. Interleaving all pairs instead re-read K/V from DRAM for every tile
///   row once the pairs' K/V outgrew L2: 1 GB of DRAM traffic for 256 MB of data at
///   16 x 1024 tokens, d128 (the wgmma kernel ran memory-bound at 85% of DRAM).
///   Ragged: heads vary fastest, then tiles, round-robin over the sequences.
///
/// kEndAligned: query tiles aligned to the end of their sequence (first_row_of_tile), for
/// kernels whose Q loads zero-fill rows before the tensor (the wgmma kernel's copy engine).
template <int kBlockM, bool kEndAligned = false>
__device__ __forceinline__ bool find_work_item(const PrefillParams& p, int item, WorkItem& w) {
  if (p.qo_indptr == nullptr) {  // dense: every sequence has the same tiles
    const int tiles_per_seq = (p.qo_len + kBlockM - 1) / kBlockM;
    const int pairs = p.num_seqs * p.num_qo_heads;
    const int group_items = p.pairs_per_group * tiles_per_seq;
    const int first_pair = item / group_items * p.pairs_per_group;
    const int group_pairs = min(p.pairs_per_group, pairs - first_pair);  // the last group may be smaller
    const int in_group = item % group_items;
    const int pair = first_pair + in_group % group_pairs;
    w.seq = pair / p.num_qo_heads;
    w.qo_head = pair % p.num_qo_heads;
    w.q_row0 = first_row_of_tile<kBlockM, kEndAligned>(p.qo_len, tiles_per_seq, in_group / group_pairs);
    w.qo_len = p.qo_len;
    w.kv_len = p.kv_len;
    w.q_start = 0;
    w.kv_start = 0;
    return true;
  }
  const int slot = item / p.num_qo_heads;
  w.qo_head = item % p.num_qo_heads;
  // Ragged: each lane of the warp counts one sequence's tiles (32 sequences at a
  // time). Every warp does the same walk, so no shared memory or barrier is needed.
  // (Opaque: the callers' loops over items would otherwise keep its derived masks
  // and addresses live throughout.)
  int lane = threadIdx.x % 32;
  asm volatile("" : "+r"(lane));
  if (p.num_seqs <= 32) {
    // Rounds: round r holds the r-th tile from the end of every sequence that has
    // one, so the heaviest tiles of all sequences (under a causal mask) start first.
    const LaneSequence<kBlockM> mine(p, lane);
    // Between two rounds where a sequence runs out of tiles every round has the same
    // members, so whole runs of rounds are skipped at once: at most 32 steps.
    int remaining = slot;
    for (int round = 0;;) {
      const unsigned members = __ballot_sync(0xffffffffu, mine.tiles > round);
      const int count = __popc(members);
      if (count == 0) return false;
      const int run_end = static_cast<int>(__reduce_min_sync(0xffffffffu, mine.tiles > round ? mine.tiles : INT_MAX));
      const int run_slots = count * (run_end - round);
      if (remaining < run_slots) {
        const int index = remaining % count;  // the index-th member of round `round + remaining / count`
        const bool owns = (members >> lane & 1u) && __popc(members & ((1u << lane) - 1u)) == index;
        mine.template assign<kEndAligned>(w, 0, __ffs(__ballot_sync(0xffffffffu, owns)) - 1, round + remaining / count);
        break;
      }
      remaining -= run_slots;
      round = run_end;
    }
  } else {
    // Many sequences: walk them 32 at a time, a warp prefix sum of tile counts finding
    // the sequence of tile `slot` (each sequence's tiles still counted from its end).
    bool found = false;
    int remaining = slot;
    for (int base = 0; base < p.num_seqs && !found; base += 32) {
      const LaneSequence<kBlockM> mine(p, base + lane);
      int inclusive = mine.tiles;
#pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += up;
      }
      const unsigned holds = __ballot_sync(0xffffffffu, remaining < inclusive);
      if (holds != 0) {
        const int owner = __ffs(holds) - 1;
        mine.template assign<kEndAligned>(w, base, owner,
                                          remaining - __shfl_sync(0xffffffffu, inclusive - mine.tiles, owner));
        found = true;
      } else {
        remaining -= __shfl_sync(0xffffffffu, inclusive, 31);
      }
    }
    if (!found) return false;
  }
  if (p.block_table != nullptr) {  // paged: keys come through the page table, at most its capacity
    w.kv_start = 0;
    w.kv_len = clamp_row(p.kv_lens[w.seq], p.max_pages * p.page_size);
  } else {
    const int kv_begin = clamp_row(p.kv_indptr[w.seq], p.kv_len);
    w.kv_start = kv_begin;
    w.kv_len = max(0, clamp_row(p.kv_indptr[w.seq + 1], p.kv_len) - kv_begin);
  }
  return true;
}

}  // namespace torch_attn
