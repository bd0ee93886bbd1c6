// The Hopper prefill kernel (sm_90a): the algorithm of sm80/prefill_kernel.cuh on wgmma,
// with warp specialisation and a persistent grid.
//
// A CTA per SM walks its list of work items (a query tile [BM rows] of one head of
// one sequence each; order and balance in the kernel body). Its warpgroups:
//   * warpgroup 0, the producer, loads each item's Q and then its K_j, V_j into a
//     ring of kStages shared-memory stages and announces each tile on an mbarrier;
//     it waits on "empty" mbarriers before refilling a stage. Two warps drive the
//     copy engine (TMA, 128-byte swizzled boxes), warp 0 for Q and K, warp 1 for V,
//     for contiguous K/V and for paged caches with pages of 8, 16, ... rows (other
//     page sizes run on the mma.sync kernel); the other two warps exit at once;
//   * warpgroups 1 .. kConsumerGroups (2, or 3 at width 64), the consumers, own 64
//     query rows each:
//         S_j = Q K_j^T        wgmma, Q and K_j from shared memory
//         P_j = softmax weights of S_j      (in registers; OnlineSoftmax, as mma.sync,
//                                            at the rows' current max where it can)
//         O  += P_j V_j        wgmma, P from registers, V_j from shared memory
//     with S_{j+1} = Q K_{j+1}^T and O += P_j V_j issued together, so the softmax of
//     tile j+1 runs on the CUDA cores while the tensor cores finish P_j V_j.
// setmaxnreg moves registers from the producer (addresses only) to the consumers.
//
// Reading past valid data. The copy engine zero-fills only outside the tensor's
// bounds: rows past a dense sequence and head-dim padding (beyond the map's dims)
// arrive as zeros, but inside a ragged batch the rows past a sequence's end are the
// next sequence's, and in a paged cache the rest of the last page is garbage. Those
// rows are harmless in Q (never stored) and K (their scores are replaced by -inf
// through a select), but a NaN in V times weight 0 is NaN: so the producer overwrites
// the rows past kv_len of the one V tile that reaches them with zeros before the
// consumers may read it (the mma.sync path never reads them: cp.async zero-fills).
#pragma once
#include <cstdint>
#include <type_traits>
#include "kernels/common/epilogue.cuh"
#include "kernels/common/fast_math.cuh"
#include "kernels/common/logits.cuh"
#include "kernels/common/mask.cuh"
#include "kernels/common/params.h"
#include "kernels/common/smem_address.cuh"
#include "kernels/common/softmax.cuh"
#include "kernels/common/tail_split.cuh"
#include "kernels/common/warp_utils.cuh"
#include "kernels/common/work_item.cuh"
#include "kernels/sm90/mbarrier.cuh"
#include "kernels/common/named_barrier.cuh"
#include "kernels/sm90/prefill_traits.cuh"
#include "kernels/sm90/registers.cuh"
#include "kernels/sm90/tma.cuh"
#include "kernels/sm90/wgmma.cuh"

namespace torch_attn {

template <int kStages, int kQStages, int kItemSlots>
struct Sm90Barriers {
  MBarrier q_full[kQStages];  // Q has landed
  MBarrier
      q_empty[kQStages];  // every consumer warp is done with the Q tile (Traits::kOutThroughQ: out stored through it)
  MBarrier k_full[kStages];  // the K tile of a stage has landed
  MBarrier v_full[kStages];
  MBarrier k_empty[kStages];  // every consumer warp is done reading the stage's K tile
  MBarrier v_empty[kStages];
  MBarrier tail;                      // the producer's own: a V tile that runs past kv_len has landed
  MBarrier item_written[kItemSlots];  // producer warp 0 has written the slot's work item
  MBarrier item_read[kItemSlots];     // every thread of the V warp and the consumers is done with it
};

/// The tiles: Q, K and V stages and, with one Q stage, out's staging tile
/// (Traits::OutStageTile).
template <class Traits, bool kOwnOutStage = !Traits::kOutThroughQ>
struct Sm90Tiles {
  using DType = typename Traits::DType;
  DType q[Traits::kQStages][Traits::QTile::kElems];
  DType k[Traits::kStages][Traits::KTile::kElems];
  DType v[Traits::kStages][Traits::VTile::kElems];
  __device__ __forceinline__ DType* out_stage(int q_stage) { return q[q_stage]; }
};
template <class Traits>
struct Sm90Tiles<Traits, true> : Sm90Tiles<Traits, false> {
  typename Traits::DType out[Traits::kOutStageElems];
  __device__ __forceinline__ typename Traits::DType* out_stage(int) { return out; }
};

/// The CTA's shared memory (1024-byte aligned: the swizzle atoms need it).
template <class Traits>
struct Sm90SharedStorage : Sm90Tiles<Traits> {
  Sm90Barriers<Traits::kStages, Traits::kQStages, Traits::kItemSlots> bar;
  WorkItem items[Traits::kItemSlots];  // the CTA's k-th work item in slot k % kItemSlots
  static_assert(sizeof(WorkItem) <= Traits::kItemBytes, "the traits reserve the work items");
};

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
struct PrefillSm90Cta {
  using DType = typename Traits::DType;
  using QTile = typename Traits::QTile;
  using KTile = typename Traits::KTile;
  using VTile = typename Traits::VTile;
  using Barriers = Sm90Barriers<Traits::kStages, Traits::kQStages, Traits::kItemSlots>;
  static constexpr int kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  static constexpr int kNFragsS = Traits::kNFragsS, kNFragsO = Traits::kNFragsO, kPFrags = Traits::kPFrags;
  // Traits::kWeightsAtCurrentMax, but not with the soft cap at width 64 (three consumer
  // groups of 160 registers): there ptxas spilled 144-156 bytes instead of 20-32, for +0.9%.
  static constexpr bool kWeightsAtCurrentMax =
      Traits::kWeightsAtCurrentMax && !(kSoftCap && Traits::kConsumerGroups == 3);

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

  // ---- producer (warpgroup 0, threads 0..127) ----

  /// Writes zeros into rows [first_row, kBlockN) of a V tile (one warp, 16 bytes a lane).
  __device__ __forceinline__ static void zero_rows_from(DType* tile, int first_row, int lane) {
    const unsigned first = min(max(first_row, 0), kBlockN), chunks = (kBlockN - first) * VTile::kChunksPerRow;
    for (unsigned i = lane; i < chunks; i += 32) {
      const unsigned row = first + i / VTile::kChunksPerRow, chunk = i % VTile::kChunksPerRow;
      *reinterpret_cast<uint4*>(tile + VTile::offset(row, chunk * 8)) = make_uint4(0, 0, 0, 0);
    }
  }

  /// The copy engine loads Q, K and V, 64 columns per box: warp 0 issues Q and K
  /// (kLoadsV = false), warp 1 V. Two issuing warps, because one issued too slowly
  /// for small pages (16 boxes of 2 KB per tile at pages of 16: 434 -> 523 TFLOP/s on
  /// the paged serving batch, H100). Rows past the tensor's tokens and columns past
  /// head_dim arrive as zeros. Contiguous K/V: one box per column block and tile.
  /// Paged caches (page sizes that are powers of two >= 8): one box per page (or per
  /// tile, for pages larger than a tile), each lane looking up one page; keys past
  /// kv_len are never looked up.
  /// Inside a ragged batch the rows past a sequence's end are the next sequence's,
  /// and in a paged cache the rest of the last page is garbage: harmless in Q (rows
  /// never stored) and K (masked by select), but not in V, so the one V tile that runs
  /// past kv_len lands on a private barrier first, and warp 1 overwrites its rows past
  /// kv_len with zeros before announcing it (tail_loads counts those phases).
  template <bool kLoadsV>
  __device__ __forceinline__ void produce_with_tma(const Sm90TensorMaps& maps, const int32_t* pages, int lane,
                                                   uint32_t& tiles_done, uint32_t& tail_loads, int items_done) {
    Barriers& bar = smem.bar;
    const bool ragged = p.qo_indptr != nullptr;
    const int batch = ragged ? 0 : w.seq;
    const int kv_head = w.qo_head / p.group_size;
    // This warp's tiles: K (and Q) for warp 0, V for warp 1.
    using Tile = std::conditional_t<kLoadsV, VTile, KTile>;
    constexpr uint32_t kQBytes = QTile::kElems * sizeof(DType), kTileBytes = Tile::kElems * sizeof(DType);
    // Boxes of `rows` rows at tile row `row`, all `blocks` column blocks of 64.
    auto load_rows = [&](DType* tile, int blocks, int tile_block_elems, int row, const CUtensorMap& map, int head,
                         int token, int box_batch, MBarrier& full) {
      for (int b = 0; b < blocks; ++b) {
        tma_load_box(tile + b * tile_block_elems + row * 64, map, b * 64, head, token, box_batch, full);
      }
    };
    // Paged: lane l loads box l of a tile (at most 128 / 8 = 16 boxes: pages have at
    // least 8 rows); its page id is looked up one tile ahead, so that the copies never
    // wait for the block table.
    const int box_rows = kPaged ? maps.kv_rows_per_box : kBlockN;
    auto page_of_box = [&](int tile) -> int32_t {
      const int key = tile * kBlockN + lane * box_rows;
      // Past kv_len: any page (the rows are masked or replaced); ids out of range read zeros.
      return kPaged && lane * box_rows < kBlockN && key < w.kv_len ? __ldg(pages + key / p.page_size) : 0;
    };
    auto load_kv_tile = [&](DType* tile, const CUtensorMap& map, int key0, int32_t page, MBarrier& full) {
      if (lane == 0) arrive_expecting_bytes(full, kTileBytes);
      if constexpr (kPaged) {
        __syncwarp();  // the byte count is posted before any box can complete
        const int row = lane * box_rows;
        if (row < kBlockN) {
          load_rows(tile, Tile::kHeadDim / 64, Tile::kBlockElems, row, map, kv_head, (key0 + row) % p.page_size, page,
                    full);
        }
      } else if (lane == 0) {
        load_rows(tile, Tile::kHeadDim / 64, Tile::kBlockElems, 0, map, kv_head, w.kv_start + key0, batch, full);
      }
    };
    // Q waits for the consumers to be done with the Q stage's previous item (its last S,
    // or, where out goes through the Q tile, its out); K_0 goes first, so it loads while
    // they finish.
    auto load_q = [&] {
      const int q_stage = items_done % Traits::kQStages;
      bar.q_empty[q_stage].wait(((items_done / Traits::kQStages) & 1) ^ 1);
      if (lane == 0) {
        arrive_expecting_bytes(bar.q_full[q_stage], kQBytes);
        load_rows(smem.q[q_stage], QTile::kHeadDim / 64, QTile::kBlockElems, 0, maps.q, w.qo_head, w.q_start + w.q_row0,
                  batch, bar.q_full[q_stage]);
      }
    };
    const KvTileRange tiles = tile_range();
    if (!kLoadsV && tiles.count == 0) load_q();
    int32_t page_next = page_of_box(tiles.begin);
    for (int t = 0; t < tiles.count; ++t, ++tiles_done) {
      const int stage = tiles_done % kStages;
      const uint32_t parity = (tiles_done / kStages) & 1;
      const int key0 = (tiles.begin + t) * kBlockN;
      const int32_t page = page_next;
      page_next = t + 1 < tiles.count ? page_of_box(tiles.begin + t + 1) : 0;
      if constexpr (!kLoadsV) {
        bar.k_empty[stage].wait(parity ^ 1);  // the consumers are done with K_{t-S}
        load_kv_tile(smem.k[stage], maps.k, key0, page, bar.k_full[stage]);
        if (t == 0) load_q();
      } else if ((ragged || kPaged) && key0 + kBlockN > w.kv_len) {
        // The tile runs past kv_len: load it on the private barrier, overwrite the rows
        // past kv_len with zeros, and only then announce it.
        bar.v_empty[stage].wait(parity ^ 1);
        load_kv_tile(smem.v[stage], maps.v, key0, page, bar.tail);
        bar.tail.wait(tail_loads & 1);
        ++tail_loads;
        zero_rows_from(smem.v[stage], w.kv_len - key0, lane);
        fence_proxy_async_shared();  // the zeros (ordinary stores) before wgmma reads them
        __syncwarp();
        if (lane == 0) bar.v_full[stage].arrive();
      } else {
        bar.v_empty[stage].wait(parity ^ 1);
        load_kv_tile(smem.v[stage], maps.v, key0, page, bar.v_full[stage]);
      }
    }
  }

  // ---- consumers (warpgroups 1 .. kConsumerGroups) ----

  /// S = Q K^T for this warpgroup's 64 rows and the K tile of `stage` (issued, not waited for).
  __device__ __forceinline__ void issue_scores(float (&s)[kNFragsS][4], uint64_t q_desc, int stage) const {
    const uint64_t k_desc = smem_descriptor(smem.k[stage], 16, 1024);
#pragma unroll
    for (int kk = 0; kk < Traits::kHeadDim / 16; ++kk) {
      // k-step kk: column block kk / 4, 32 bytes per 16 columns inside the 128-byte swizzled row
      const uint32_t q_step = (kk / 4) * QTile::kBlockBytes + (kk % 4) * 32;
      const uint32_t k_step = (kk / 4) * KTile::kBlockBytes + (kk % 4) * 32;
      wgmma_ss<kBlockN, DType>(s, advance_descriptor(q_desc, q_step), advance_descriptor(k_desc, k_step), kk > 0);
    }
  }

  /// O += P V for the V tile of `stage` (issued, not waited for).
  __device__ __forceinline__ void issue_pv(float (&o)[kNFragsO][4], const uint32_t (&pw)[kPFrags][4], int stage) const {
    // V is [keys][dims] with dims contiguous: MN-major for B = V (N = dims, K = keys).
    const uint64_t v_desc = smem_descriptor(smem.v[stage], VTile::kBlockBytes, 1024);
#pragma unroll
    for (int kk = 0; kk < kPFrags; ++kk) {
      wgmma_rs<Traits::kHeadDimV, DType>(o, pw[kk], advance_descriptor(v_desc, kk * 16 * 128), 1);
    }
  }

  /// Weights in fp32 score fragments -> the A fragments of O += P V (keys 16 kk..16 kk + 15).
  __device__ __forceinline__ static void pack_weights(const float (&s)[1][kNFragsS][4], uint32_t (&pw)[kPFrags][4]) {
#pragma unroll
    for (int kk = 0; kk < kPFrags; ++kk) {
      pw[kk][0] = pack_pair<DType>(s[0][2 * kk][0], s[0][2 * kk][1]);
      pw[kk][1] = pack_pair<DType>(s[0][2 * kk][2], s[0][2 * kk][3]);
      pw[kk][2] = pack_pair<DType>(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]);
      pw[kk][3] = pack_pair<DType>(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3]);
    }
  }

  /// Before wgmma_fence: every ordinary write of the registers the next wgmmas use
  /// must come first (the compiler may otherwise sink register moves past the fence,
  /// and ptxas then serialises the wgmmas).
  __device__ __forceinline__ static void pin_operands(float (&s)[kNFragsS][4], float (&o)[kNFragsO][4],
                                                      uint32_t (&pw)[kPFrags][4]) {
    wgmma_pin(s);
    wgmma_pin(o);
    wgmma_pin(pw);
  }

  /// Each consumer warp arrives once on `empty` after its wgmma reads of the stage completed.
  __device__ __forceinline__ static void release(MBarrier& empty, int lane) {
    if (lane == 0) empty.arrive();
  }

  __device__ __forceinline__ void consume(int group, int warp_in_group, int lane, uint32_t& tiles_done,
                                          int items_done) const {
    // Addresses and masks derived from the warp and lane alone would be computed once,
    // outside the loop over work items, and kept (spilled) throughout: opaque copies
    // make the compiler derive them per item, where they are needed.
    asm volatile("" : "+r"(group), "+r"(warp_in_group), "+r"(lane));
    const VisibleKeys visibility = w.visible_keys<kChunked>(p);
    const KvTileRange tiles = group_tile_range(group);
    Barriers& bar = smem.bar;
    const int warp_row0 = group * Traits::kRowsPerGroup + warp_in_group * 16;  // first Q-tile row of this warp
    const int query_row0 = w.q_row0 + warp_row0;
    // Q rows [64 group, 64 group + 64) of column block 0; K-major, 1024 bytes per 8 rows.
    const int q_stage = items_done % Traits::kQStages;
    const uint64_t q_desc =
        smem_descriptor(smem.q[q_stage] + group * Traits::kRowsPerGroup * QTile::kBlockCols, 16, 1024);

    float o[1][kNFragsO][4];
#pragma unroll
    for (int nd = 0; nd < kNFragsO; ++nd)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[0][nd][e] = 0.f;
    OnlineSoftmax<1> softmax;
    softmax.init();
    bar.q_full[q_stage].wait((items_done / Traits::kQStages) & 1);
    // A group that sees no tile never reads Q (with out staged elsewhere: hand it back now).
    if (!Traits::kOutThroughQ && tiles.count == 0) release(bar.q_empty[q_stage], lane);

    float s[1][kNFragsS][4];
    uint32_t pw[kPFrags][4];
    // S = Q K^T for the K tile of `stage`, issued and waited for.
    auto scores_now = [&](int stage) {
      wgmma_fence();
      issue_scores(s[0], q_desc, stage);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_pin(s[0]);
    };
    // Scores of tile j (in s) -> logits: soft cap, mask.
    auto to_logits = [&](int j, auto mask) {
      scores_to_logits<kSoftCap, decltype(mask)::value>(s, p, visibility, query_row0, (tiles.begin + j) * kBlockN,
                                                        lane);
    };
    // Logits -> weights P (left in s), from the tile's max; rescale: what O must be
    // multiplied by (exactly 1 for a row whose max stayed). Returns whether any row of
    // the warp moved. With kWeightsAtCurrentMax the max moves to the tile's
    // wherever that is larger (no lazy rescaling): the tiles after it then start at
    // the rows' current max.
    auto weights_from_tile_max = [&](float (&rescale)[2]) -> bool {
      constexpr float kLazyRescaleLog2 = kWeightsAtCurrentMax ? 0.f : OnlineSoftmax<1>::kMaxWeightLog2;
      bool moved = false;
      softmax.logits_to_weights(s, p.logit_to_log2, kLazyRescaleLog2, [&](int r, float factor, bool moves) {
        rescale[r] = factor;
        moved |= moves;
      });
      return __any_sync(0xffffffffu, moved);
    };
    // The same for tile j > 0, whose scores S_j = Q K_j^T (K_j in `stage`, still held)
    // have just arrived, with kWeightsAtCurrentMax: at the rows' current max
    // first (OnlineSoftmax::weights_at_current_max), and only where a weight could
    // grow too large there, S_j once more and the tile's max. The warpgroup decides
    // together, as its four warps issue its wgmmas together: named barrier 1 + group
    // (the epilogue's, free here). A warp deciding alone saves that barrier (~4% at
    // d128 16k, measured on a build that was wrong where warps disagree), but must then
    // compute S_j again without wgmma, on its CUDA cores from shared memory: that build
    // measured 3.6% slower than the kernel before this path, its fast path the same in
    // SASS (not explained; H100, ncu at base clocks). Where the wait for P_{j-1} V_{j-1}
    // ends the step (kPvWaitInNextStep false), this branch also keeps ptxas from hoisting
    // that wait above the exponentials: they now run under the product.
    auto weights_after_first = [&](int j, auto mask, float (&rescale)[2], int stage) -> bool {
      to_logits(j, mask);
      const auto whole_group = [&](bool bounded) { return named_barrier_all(1 + group, 128, bounded); };
      if (softmax.weights_at_current_max(s, p.logit_to_log2, whole_group)) {
        rescale[0] = rescale[1] = 1.f;
        return false;
      }
      wgmma_wait<0>();
      pin_operands(s[0], o[0], pw);
      scores_now(stage);
      to_logits(j, mask);
      return weights_from_tile_max(rescale);
    };

    // Tile j of the group's is tile tiles_done + j of the CTA's pipeline (tiles_done
    // counts the CTA's tiles before it): its stage and the parity of that stage's
    // current phase.
    auto stage_of = [&](int j) { return static_cast<int>((tiles_done + j) % kStages); };
    auto parity_of = [&](int j) { return ((tiles_done + j) / kStages) & 1; };
    // The CTA's tiles that none of the group's rows sees, before or after its own (n
    // of them from tiles_done on): each is handed back once it has landed (an arrival
    // on an empty barrier counts towards the barrier's current phase, which is the
    // tile's only once the tile is in). The CTA's range is recomputed where needed:
    // kept live through the tile steps, it made ptxas spill.
    auto pass_over = [&](int n) {
      for (int j = 0; j < n; ++j) {
        bar.k_full[stage_of(j)].wait(parity_of(j));
        release(bar.k_empty[stage_of(j)], lane);
        bar.v_full[stage_of(j)].wait(parity_of(j));
        release(bar.v_empty[stage_of(j)], lane);
      }
      tiles_done += n;
    };
    if constexpr (Traits::kGroupTileRanges)
      pass_over(tiles.begin - tile_range().begin);  // the CTA's tiles before the group's
    if (tiles.count > 0) {
      // Tile 0: S_0 alone.
      bar.k_full[stage_of(0)].wait(parity_of(0));
      scores_now(stage_of(0));
      release(bar.k_empty[stage_of(0)], lane);
      // rescale: what O must be multiplied by before P_j V_j adds to it, from the
      // softmax of tile j.
      float rescale[2];
      // (Both ends where tile 0 needs any test: a third instantiation of the softmax
      // for tile 0 alone made ptxas spill more at width 64.)
      auto first_weights = [&](auto mask) {
        to_logits(0, mask);
        weights_from_tile_max(rescale);
      };
      if (tiles.needs_mask(0))
        first_weights(MaskBoth{});
      else
        first_weights(MaskNone{});
      rescale[0] = rescale[1] = 1.f;  // O is still 0: nothing to rescale (any_row_moved reads this)
      // After P_t V_t (t = -1: none was issued): its V stage goes back to the producer,
      // and O takes tile t+1's rescale before P_{t+1} V_{t+1} adds to it where a row
      // of the warp moved (a warp-uniform branch: most tiles move none).
      auto finish_pv = [&](int t, bool moved) {
        wgmma_wait<0>();
        wgmma_pin(o[0]);
        if (t >= 0) release(bar.v_empty[stage_of(t)], lane);
        if (moved) {
          OnlineSoftmax<1>::rescale_row(o, 0, rescale[0]);
          OnlineSoftmax<1>::rescale_row(o, 1, rescale[1]);
        }
      };
      // Whether a row moved, from the factors (1: it did not), for kPvWaitInNextStep: the
      // flag the softmax returns, kept live into the next step, cost registers (spills with
      // the soft cap at width 256). Without it the flag is used: derived from the factors
      // there, the d64 soft-cap kernels spilled 40 bytes more.
      auto any_row_moved = [&] { return __any_sync(0xffffffffu, rescale[0] != 1.f || rescale[1] != 1.f); };

      // Tile j: S_j = Q K_j^T and O += P_{j-1} V_{j-1} in flight together; the
      // softmax of S_j overlaps the second. Where the wait for P_{j-1} V_{j-1} sits
      // is the tile shape's choice (kPvWaitInNextStep, sm90/prefill_traits.cuh): at
      // the end of step j, ptxas hoists it above the softmax's exponentials (it
      // places a wait as early as it can in its basic block), so they run after the
      // product; at the start of step j + 1 (after the loop's back edge) it cannot
      // move, and they run under it. (With kWeightsAtCurrentMax they run under it at
      // the end of step j too: the softmax's branch keeps the wait after them.)
      auto step = [&](int j, auto mask) {
        const int stage = stage_of(j), prev_stage = stage_of(j - 1);
        if (Traits::kPvWaitInNextStep) finish_pv(j - 2, any_row_moved());
        pack_weights(s, pw);  // P_{j-1}, from the weights left in s
        bar.k_full[stage].wait(parity_of(j));
        pin_operands(s[0], o[0], pw);
        wgmma_fence();  // s, o and pw were written by ordinary instructions
        issue_scores(s[0], q_desc, stage);
        wgmma_commit();
        bar.v_full[prev_stage].wait(parity_of(j - 1));
        wgmma_fence();  // (ptxas wants one per batch of wgmmas)
        issue_pv(o[0], pw, prev_stage);
        wgmma_commit();
        wgmma_wait<1>();  // S_j is ready; P_{j-1} V_{j-1} may still run
        wgmma_pin(s[0]);
        // K_j goes back to the producer once no S_j is left to compute from it.
        bool moved;
        if constexpr (kWeightsAtCurrentMax) {
          moved = weights_after_first(j, mask, rescale, stage);
          release(bar.k_empty[stage], lane);
        } else {
          release(bar.k_empty[stage], lane);
          to_logits(j, mask);
          moved = weights_from_tile_max(rescale);
        }
        if (!Traits::kPvWaitInNextStep) finish_pv(j - 1, moved);
      };
      int j = 1;
      for (; j < max(1, tiles.full_begin); ++j) step(j, MaskBoth{});
      for (; j < tiles.full_end; ++j) step(j, MaskNone{});
      // After the unmasked run only the ends of the rows' visible keys need a test (one
      // compare per score, not two: +3-4% on short causal shapes, H200). With the soft
      // cap both, as before: the one-sided test made ptxas spill at widths 64 and 256.
      for (; j < tiles.count; ++j) step(j, std::conditional_t<kSoftCap, MaskBoth, MaskEnd>{});

      // Every S = Q K^T of the item is done: with its own staging tile for out, the Q
      // tile goes back to the producer now (see the traits).
      if constexpr (!Traits::kOutThroughQ) release(bar.q_empty[q_stage], lane);
      const int last = tiles.count - 1, last_stage = stage_of(last);
      if (Traits::kPvWaitInNextStep) finish_pv(last - 1, any_row_moved());
      pack_weights(s, pw);
      bar.v_full[last_stage].wait(parity_of(last));
      pin_operands(s[0], o[0], pw);
      wgmma_fence();
      issue_pv(o[0], pw, last_stage);
      wgmma_commit();
      wgmma_wait<0>();
      wgmma_pin(o[0]);
      release(bar.v_empty[last_stage], lane);
      tiles_done += tiles.count;
    }
    // The CTA's tiles after the group's own. (Before the epilogue: after it, the values
    // this needs stayed live through the stores, and the d256 kernels spilled 72-136 bytes.)
    if constexpr (Traits::kGroupTileRanges) {
      const KvTileRange cta = tile_range();
      pass_over(cta.begin + cta.count - (tiles.begin + tiles.count));
    }

    float lse[2];
    softmax.finalize(o, p.logit_to_log2, lse);
    // A tail piece stores out only where it is the last of its item's pieces to
    // finish, after merging them all (tail_split.cuh).
    bool stores = true;
    if (!kPaged && w.is_tail_piece()) {
      const TailPieceRows<kNFragsO, Traits::kConsumerWarps> rows{p.split, w, group * 4 + warp_in_group, lane};
      stores = rows.hand_over(o, lse);
      if (stores) rows.merge(o, lse);
    }
    // The sink enters once, after the pieces of a tail item are merged.
    if (stores && p.sinks != nullptr) OnlineSoftmax<1>::add_sink(o, lse, __ldg(p.sinks + w.qo_head));
    // Out goes through its staging tile (Traits::OutStageTile): the Q tile, whose rows
    // the warpgroup's last wgmma read (all four warps are past it after the barrier), or
    // a tile of its own, whose rows are the warp's alone.
    if constexpr (Traits::kOutThroughQ) named_barrier_sync(1 + group, 128);
    if (stores) {
      store_warp_rows<typename Traits::OutStageTile>(p, w, smem.out_stage(q_stage), warp_row0, lane, out_chunks_valid,
                                                     o, lse);
    }
    if constexpr (Traits::kOutThroughQ) {
      // The next item's Q may now overwrite these rows: through the copy engine (async
      // proxy) after these ordinary shared-memory accesses, hence the proxy fence.
      fence_proxy_async_shared();
      __syncwarp();
      release(bar.q_empty[q_stage], lane);
    }
  }
};

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    prefill_sm90_kernel(const __grid_constant__ PrefillParams params, const __grid_constant__ Sm90TensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using DType = typename Traits::DType;
  static_assert(sizeof(Sm90Barriers<Traits::kStages, Traits::kQStages, Traits::kItemSlots>) == Traits::kBarrierBytes,
                "the traits reserve the barriers");
  extern __shared__ __align__(16) uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<Sm90SharedStorage<Traits>*>(smem_raw + (1024 - smem_address(smem_raw) % 1024) % 1024);
  static_assert(sizeof(smem) + 1024 <= Traits::kSmemBytes, "the traits reserve the shared storage");
  if (threadIdx.x == 0) {
    // One arrival with the byte count that the copy engine then completes.
    const uint32_t full_arrivals = 1;
    for (int s = 0; s < Traits::kQStages; ++s) {
      smem.bar.q_full[s].init(full_arrivals);
      smem.bar.q_empty[s].init(Traits::kConsumerWarps);
    }
    for (int s = 0; s < Traits::kStages; ++s) {
      smem.bar.k_full[s].init(full_arrivals);
      smem.bar.v_full[s].init(full_arrivals);
      smem.bar.k_empty[s].init(Traits::kConsumerWarps);  // one arrival per consumer warp
      smem.bar.v_empty[s].init(Traits::kConsumerWarps);
    }
    smem.bar.tail.init(1);
    for (int s = 0; s < Traits::kItemSlots; ++s) {
      smem.bar.item_written[s].init(1);
      smem.bar.item_read[s].init(32 + 128 * Traits::kConsumerGroups);
    }
  }
  __syncthreads();

  // Persistent. Work items come heaviest first (find_work_item); the CTA's first is
  // item blockIdx.x, and each later one is claimed as the previous one's loads end: the
  // next item of the list that no CTA has taken (params.item_counter; without it the
  // grid covers every item). Claiming balances the SMs where a static assignment
  // could not: the items' costs differ under a causal mask, and a round-robin (snake)
  // order left SMs idle once the group boundaries of the list shifted it (simulated:
  // 79% of the ideal for d128 causal S=4096 B=4, 99% with claiming). Producer warp 0
  // claims and finds the items; the other roles read them from shared memory (the
  // CTA's k-th item in slot k % kItemSlots; end_of_list after the last). The
  // pipeline's stages and phases run on across items; tiles_done counts K/V tiles.
  // Items of equal cost that would leave SMs idle (a last, partial round, or fewer
  // items than SMs) may run as pieces of their K/V tiles, claimed after the whole
  // items (tail_split.h).
  const int group = static_cast<int>(threadIdx.x) / 128;
  constexpr int kItemSlots = Traits::kItemSlots;
  uint32_t tiles_done = 0;
  auto cta_of = [&](const WorkItem& work) {
    return PrefillSm90Cta<Traits, kSoftCap, kPaged, kChunked>{params, work, smem, params.head_dim_v / 8};
  };
  // The V warp and the consumers: body(cta, k) for the CTA's k-th item, read from its
  // slot throughout. Every reading thread arrives on item_read itself: an arrival
  // releases only the arriving thread's own earlier reads.
  auto for_each_handed_item = [&](auto&& body) {
    for (int k = 0;; ++k) {
      const int slot = k % kItemSlots;
      smem.bar.item_written[slot].wait((k / kItemSlots) & 1);
      const WorkItem& work = smem.items[slot];
      if (work.is_end_of_list()) break;
      body(cta_of(work), k);
      smem.bar.item_read[slot].arrive();
    }
  };
  if (group == 0) {
    release_registers<Traits::kProducerRegs>();
    const int lane = static_cast<int>(threadIdx.x) % 32;
    uint32_t tail_loads = 0;
    if (threadIdx.x < 32) {  // warp 0: claims and finds the items, loads Q and K
      // A claim is a whole item or a piece of a tail item (tail_split.h).
      int item = static_cast<int>(blockIdx.x);
      for (int k = 0;; ++k) {
        const int slot = k % kItemSlots;
        smem.bar.item_read[slot].wait(((k / kItemSlots) & 1) ^ 1);  // item k - kItemSlots is done
        __syncwarp();                                               // (and this warp's own reads of it)
        {
          // Tiles aligned to the sequence's end: rows before it load as zeros (dense, or the
          // first sequence of a ragged batch) or as the previous sequence's, never stored.
          WorkItem found;
          if (!find_claimed_work<Traits::kBlockM, /*kMaySplit=*/!kPaged>(params, item, found)) {
            found = WorkItem::end_of_list();  // (a ragged batch's spare items come last)
          } else if constexpr (Traits::kGroupTileRanges) {
            // Lane g works out consumer group g's tiles.
            const unsigned skips = lane < Traits::kConsumerGroups
                                       ? static_cast<unsigned>(cta_of(found).group_skips(lane)) << (8 * lane)
                                       : 0u;
            found.group_skips = static_cast<int>(__reduce_or_sync(0xffffffffu, skips));
          }
          if (lane == 0) {
            smem.items[slot] = found;
            smem.bar.item_written[slot].arrive();
          }
        }
        // Read back from shared memory like the other roles do: the producer's few
        // registers cannot hold the item as well.
        __syncwarp();
        const WorkItem& work = smem.items[slot];
        if (work.is_end_of_list()) break;
        cta_of(work).template produce_with_tma<false>(maps, kPaged ? work.block_table_row(params) : nullptr, lane,
                                                      tiles_done, tail_loads, k);
        // The next item, claimed once this one's K tiles are on their way (the consumers
        // are a stage or two behind, which hides the atomic's latency). Claimed any
        // earlier, the CTAs would start the items of one K/V head (GQA) at times further
        // apart, and read its keys from DRAM once each instead of once together.
        int next = params.split.claims;
        if (params.item_counter != nullptr && lane == 0) {
          // (The grid size read here, not kept: kept across the item, it was spilled.)
          unsigned grid;
          asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(grid));
          next = atomicAdd(params.item_counter, 1) + static_cast<int>(grid);
        }
        item = __shfl_sync(0xffffffffu, next, 0);
      }
    } else if (threadIdx.x < 64) {  // warp 1: V
      for_each_handed_item([&](auto&& cta, int k) {
        cta.template produce_with_tma<true>(maps, kPaged ? cta.w.block_table_row(params) : nullptr, lane, tiles_done,
                                            tail_loads, k);
      });
    }  // warps 2 and 3 are done
  } else {
    // One round of work (no more claims than CTAs: no counter): consumer group g starts
    // g - 1 of a group's tile steps of tensor-core time (BN x D / 16 cycles: 2 x 64 x
    // BN x D multiply-adds at 2048 a cycle) after group 1, so that one group's softmax
    // runs under the others' products. Begun together, the groups stayed in step through
    // the whole item, their softmaxes coinciding while the tensor cores idled: 128 items
    // of 128 tiles on 132 SMs took 329-334 us at base clocks, 243 us staggered (H100,
    // ncu), against 228 us per round inside a 15.5-round run. In longer runs the groups
    // fall out of step by themselves, and staggering every CTA's start cost 1.5-2.2% at
    // d128, 16k tokens (2048 items). It is skipped where keys are few as well (kv_len, an
    // upper bound for ragged batches and page tables, below 8 K/V tiles): there the delay,
    // up to 1024 cycles, would be a large part of the kernel (not measured).
    if (params.item_counter == nullptr && params.kv_len >= 8 * Traits::kBlockN) {
      spin_for_cycles((group - 1) * (Traits::kBlockN * Traits::kHeadDim / 16));
    }
    claim_registers<Traits::kConsumerRegs>();
    for_each_handed_item([&](auto&& cta, int k) {
      cta.consume(group - 1, (static_cast<int>(threadIdx.x) / 32) % 4, static_cast<int>(threadIdx.x) % 32, tiles_done,
                  k);
    });
  }
#else
  // Compiled for another architecture: the host launches this kernel only from
  // builds with sm_90a code, on devices of compute capability 9.0.
  __trap();
#endif
}

}  // namespace torch_attn
