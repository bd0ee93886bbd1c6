// The wgmma kernel's consumers (warpgroups 1 .. kConsumerGroups), 64 query rows each: S = Q K^T and
// O += P V on the tensor cores, the online softmax between them, and out's epilogue.
#pragma once
#include <cstdint>
#include <type_traits>
#include "kernels/common/epilogue.cuh"
#include "kernels/common/fast_math.cuh"
#include "kernels/common/logits.cuh"
#include "kernels/common/mask.cuh"
#include "kernels/common/named_barrier.cuh"
#include "kernels/common/params.h"
#include "kernels/common/softmax.cuh"
#include "kernels/common/tail_split.cuh"
#include "kernels/sm90/item_tiles.cuh"
#include "kernels/sm90/mbarrier.cuh"
#include "kernels/sm90/wgmma.cuh"

namespace torch_attn {

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
struct Sm90Consumer : Sm90Item<Traits, kPaged, kChunked> {
  using Item = Sm90Item<Traits, kPaged, kChunked>;
  using Item::group_tile_range;
  using Item::out_chunks_valid;
  using Item::p;
  using Item::smem;
  using Item::tile_range;
  using Item::w;
  using DType = typename Traits::DType;
  using QTile = typename Traits::QTile;
  using KTile = typename Traits::KTile;
  using VTile = typename Traits::VTile;
  using Barriers = typename Sm90SharedStorage<Traits>::Barriers;
  static constexpr int kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  static constexpr int kNFragsS = Traits::kNFragsS, kNFragsO = Traits::kNFragsO, kPFrags = Traits::kPFrags;
  // Traits::kWeightsAtCurrentMax, but not with the soft cap at width 64 (three consumer
  // groups of 160 registers): there ptxas spilled 144-156 bytes instead of 20-32, for +0.9%.
  static constexpr bool kWeightsAtCurrentMax =
      Traits::kWeightsAtCurrentMax && !(kSoftCap && Traits::kConsumerGroups == 3);

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

}  // namespace torch_attn
