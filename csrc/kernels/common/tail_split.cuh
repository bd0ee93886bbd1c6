// The wgmma kernel's side of the tail split (the plan: tail_split.h): what a claim
// is, and how the pieces of a tail item meet.
#pragma once
#include <cmath>
#include "kernels/common/params.h"
#include "kernels/common/tail_split.h"
#include "kernels/common/work_item.cuh"

namespace torch_attn {

/// The work of claim `claim`: a whole item below split.first_item, then the tail
/// items' pieces, piece-major (piece q of tail item r: claim first_item + q * R + r).
/// Returns false from split.claims on (and for a ragged batch's spare items).
/// kMaySplit = false (paged caches, which the host never splits): whole items only.
template <int kBlockM, bool kMaySplit>
__device__ __forceinline__ bool find_claimed_work(const PrefillParams& p, int claim, WorkItem& w) {
  const TailSplit& split = p.split;
  if (claim >= split.claims) return false;
  const bool piece = kMaySplit && claim >= split.first_item;
  // (Branches: whole items never pay for the pieces' divisions. One call of
  // find_work_item for both: it is large, and each call site is a copy.)
  auto tail_items = [&] { return p.num_q_tile_slots * p.num_qo_heads - split.first_item; };
  int item = claim;
  if (piece) item = split.first_item + (claim - split.first_item) % tail_items();
  if (!find_work_item<kBlockM, /*kEndAligned=*/true>(p, item, w)) return false;
  if (piece) {
    w.tail_item = item - split.first_item;
    w.tail_piece = (claim - split.first_item) / tail_items();
    w.kv_tile0 = w.tail_piece * split.piece_tiles;
    w.kv_tiles = min(split.piece_tiles, split.item_tiles - w.kv_tile0);
  }
  return true;
}

/// One consumer warp's rows of a tail piece (16 rows; O in kNFragsO fragments of 4
/// floats a thread, the rows' lse in lse[0] (row g = lane / 4) and lse[1] (g + 8)).
template <int kNFragsO, int kConsumerWarps>
struct TailPieceRows {
  const TailSplit& split;
  const WorkItem& w;
  int warp;  // consumer warp 0 .. kConsumerWarps - 1
  int lane;

  __device__ __forceinline__ int64_t slot_warp(int piece) const {
    return (static_cast<int64_t>(w.tail_item) * split.pieces + piece) * kConsumerWarps + warp;
  }
  __device__ __forceinline__ float4* out_of(int piece) const {
    return reinterpret_cast<float4*>(split.partial_out) + slot_warp(piece) * kNFragsO * 32 + lane;
  }
  __device__ __forceinline__ float* lse_of(int piece) const { return split.partial_lse + slot_warp(piece) * 16; }

  /// Writes this piece's out (normalised by its own sum) and lse, then counts the
  /// warp's arrival at the item. Returns whether it came last: then the caller merges.
  __device__ __forceinline__ bool hand_over(const float (&o)[1][kNFragsO][4], const float (&lse)[2]) const {
    const int piece = w.tail_piece;
    float4* out = out_of(piece);
#pragma unroll
    for (int f = 0; f < kNFragsO; ++f)
      __stcg(out + f * 32, make_float4(o[0][f][0], o[0][f][1], o[0][f][2], o[0][f][3]));
    if (lane % 4 == 0) {  // the quad's four lanes hold the same row sums
      __stcg(lse_of(piece) + lane / 4, lse[0]);
      __stcg(lse_of(piece) + lane / 4 + 8, lse[1]);
    }
    // The classic last-block pattern: every writer fences, then one atomic per warp;
    // where the count reaches the item's pieces, lane 0 fences again and the warp
    // synchronises with it (the shuffle alone orders no memory) before reading the
    // other pieces' slots (through L2: __ldcg).
    __threadfence();
    __syncwarp();
    int done = 0;
    if (lane == 0) done = atomicAdd(split.arrivals + static_cast<int64_t>(w.tail_item) * kConsumerWarps + warp, 1) + 1;
    const bool last = __shfl_sync(0xffffffffu, done, 0) == split.pieces;
    if (last) {
      __threadfence();
      __syncwarp();
    }
    return last;
  }

  /// out and lse of the whole item from its pieces' slots, in slot order:
  ///     lse = log(sum_q exp(lse_q)),  out = sum_q exp(lse_q - lse) out_q.
  /// A row that saw no key in any piece (every lse_q = -inf) gets out 0, lse -inf.
  __device__ __forceinline__ void merge(float (&o)[1][kNFragsO][4], float (&lse)[2]) const {
    const int pieces = split.pieces;
    float max_lse[2] = {-INFINITY, -INFINITY};
    // (Loops over pieces stay rolled: the merge runs once per tail item and warp, and
    // unrolled it grew the kernel by 1,800 instructions.)
#pragma unroll 1
    for (int q = 0; q < pieces; ++q) {
#pragma unroll
      for (int h = 0; h < 2; ++h) max_lse[h] = fmaxf(max_lse[h], __ldcg(lse_of(q) + lane / 4 + 8 * h));
    }
    // A piece's weight in row h; max_lse = -inf: every lse_q is -inf and weighs 0, not exp(NaN).
    auto weight_of = [&](int q, int h) {
      return max_lse[h] == -INFINITY ? 0.f : __expf(__ldcg(lse_of(q) + lane / 4 + 8 * h) - max_lse[h]);
    };
    float sum[2] = {0.f, 0.f};
#pragma unroll 1
    for (int q = 0; q < pieces; ++q) {
#pragma unroll
      for (int h = 0; h < 2; ++h) sum[h] += weight_of(q, h);
    }
    // O in groups of 8 fragments, each over all pieces: the loads in flight stay at 32
    // registers (all of O's fragments of a piece at once made width 256 spill).
    constexpr int kGroup = kNFragsO < 8 ? kNFragsO : 8;
#pragma unroll
    for (int f0 = 0; f0 < kNFragsO; f0 += kGroup) {
#pragma unroll
      for (int f = f0; f < f0 + kGroup; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[0][f][e] = 0.f;
#pragma unroll 1
      for (int q = 0; q < pieces; ++q) {
        const float weight[2] = {weight_of(q, 0), weight_of(q, 1)};
        const float4* out = out_of(q);
#pragma unroll
        for (int f = f0; f < f0 + kGroup; ++f) {
          const float4 part = __ldcg(out + f * 32);
          o[0][f][0] = fmaf(weight[0], part.x, o[0][f][0]);
          o[0][f][1] = fmaf(weight[0], part.y, o[0][f][1]);
          o[0][f][2] = fmaf(weight[1], part.z, o[0][f][2]);
          o[0][f][3] = fmaf(weight[1], part.w, o[0][f][3]);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // sum >= 1 where a piece saw a key (the largest weighs exactly 1).
      const float inv_sum = sum[h] > 0.f ? __fdividef(1.f, sum[h]) : 0.f;
      lse[h] = sum[h] > 0.f ? max_lse[h] + __logf(sum[h]) : -INFINITY;
#pragma unroll
      for (int f = 0; f < kNFragsO; ++f) {
        o[0][f][2 * h] *= inv_sum;
        o[0][f][2 * h + 1] *= inv_sum;
      }
    }
  }
};

}  // namespace torch_attn
