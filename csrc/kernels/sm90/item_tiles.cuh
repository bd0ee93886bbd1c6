// What both roles of the wgmma kernel read of one work item: its parameters, its slot, its
// shared memory, and which K/V tiles the CTA and each consumer group see.
#pragma once
#include "kernels/common/mask.cuh"
#include "kernels/common/params.h"
#include "kernels/common/warp_utils.cuh"
#include "kernels/common/work_item.cuh"
#include "kernels/sm90/shared_storage.cuh"

namespace torch_attn {

template <class Traits, bool kPaged, bool kChunked>
struct Sm90Item {
  static constexpr int kBlockN = Traits::kBlockN;

  const PrefillParams& p;
  const WorkItem& w;
  // One pointer for all of shared memory: every value the roles share stays live
  // across setmaxnreg, and the producer has only 32 or 40 registers.
  Sm90SharedStorage<Traits>& smem;
  int out_chunks_valid;  // 16-byte chunks of real head dim of v and out (Q, K, V: the tensor maps')

  // Each role computes the tile range itself, after setmaxnreg: values computed
  // before the role split stay live across it, which cost a spill.
  // A tail piece: its part of the item's tiles.
  __device__ __forceinline__ KvTileRange tile_range() const {
    const KvTileRange item = KvTileRange::of<kBlockN>(w.visible_keys<kChunked>(p), w.row_begin(),
                                                      w.row_end<Traits::kBlockM>() - w.row_begin());
    return !kPaged && w.is_tail_piece() ? item.part(w.kv_tile0, w.kv_tiles) : item;
  }

  /// Which of the CTA's K/V tiles (tile_range()) consumer group `group`'s 64 rows see:
  /// under a causal mask or a window whole tiles may hide from a group's rows, and the
  /// group then leaves them to the others. Mostly the item's diagonal tile, from its
  /// first group, wherever the tile begins past that group's last row (d64, BM 192 and
  /// BN 128: 72 instead of 81 group tile steps per sequence and head at S=1024; d256,
  /// BN 64: on every item of a square causal mask). As WorkItem::group_skips has it:
  /// the CTA's tiles before the group's (bits 0-3) and after them (bits 4-7), or
  /// kSeesNoTile where the group's rows see no key (rows outside the sequence, or rows
  /// that a causal mask with more queries than keys leaves without any). The group's
  /// rows lie at most BN rows from the item's ends (d64: 128, d256: 64) and the visible
  /// keys' ends move by at most one key a row, so both counts are 0 or 1; whatever they
  /// cannot encode runs all the CTA's tiles, right through the masks. The producer
  /// works this out (Traits::kGroupTileRanges: only where it pays), off the consumers'
  /// way to their first tile: there, the range arithmetic is ~140 instructions of
  /// 64-bit math.
  static constexpr int kSeesNoTile = 0xff;
  __device__ __forceinline__ int group_skips(int group) const {
    // A tail piece's tiles are a part of its item's, which the group's range (of the
    // whole item) is not; pieces come only without mask or window: every row sees them all.
    if (!kPaged && w.is_tail_piece()) return 0;
    const int first = max(w.q_row0 + group * Traits::kRowsPerGroup, w.row_begin());
    const int end = min(w.q_row0 + (group + 1) * Traits::kRowsPerGroup, w.row_end<Traits::kBlockM>());
    if (end <= first) return kSeesNoTile;
    const KvTileRange cta = tile_range();
    const KvTileRange mine = KvTileRange::of<kBlockN>(w.visible_keys<kChunked>(p), first, end - first);
    if (mine.count == 0) return kSeesNoTile;
    const int before = mine.begin - cta.begin, after = cta.begin + cta.count - (mine.begin + mine.count);
    return before >= 0 && after >= 0 && before < 15 && after < 15 ? before | after << 4 : 0;
  }

  /// This consumer group's tiles (group_skips; all the CTA's where Traits::kGroupTileRanges
  /// is off): a part of the CTA's, with the CTA's unmasked run (the group's own may be
  /// longer: a few tiles tested that need not be).
  __device__ __forceinline__ KvTileRange group_tile_range(int group) const {
    const KvTileRange cta = tile_range();
    if constexpr (!Traits::kGroupTileRanges) return cta;
    // (The group through votes: derived from threadIdx, the range took vector registers
    // that ptxas found only by spilling, 70-130 bytes at d64 and d256.)
    const int skips = (w.group_skips >> (8 * warp_uniform_2bit(group))) & 0xff;
    const int before = skips == kSeesNoTile ? 0 : skips & 15,
              after = skips == kSeesNoTile ? cta.count - before : skips >> 4;
    return cta.part(before, cta.count - before - after);
  }
};

}  // namespace torch_attn
