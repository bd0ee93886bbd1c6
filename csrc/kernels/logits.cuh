// Scores to logits for one warp's accumulator tile: soft cap, then the mask by select.
//
// Both the mma.sync and the wgmma kernels hold S in the same per-warp layout: each
// warp owns 16 * kMFrags query rows, and fragment [mi][nb][e] of a thread holds
// row 16 mi + g + 8 (e / 2), key 8 nb + 2 t + e % 2 (g = lane / 4, t = lane % 4).
#pragma once
#include <cmath>
#include "mask.cuh"
#include "mma.cuh"
#include "params.h"

namespace torch_attn {

/// query_row0: the sequence index of the warp's first query row; key0: the tile's first key.
template <bool kSoftCap, TileMask kMask, int kMFrags, int kNFragsS>
__device__ __forceinline__ void scores_to_logits(float (&s)[kMFrags][kNFragsS][4], const PrefillParams& p,
                                                 const VisibleKeys& visibility, int query_row0, int key0, int lane) {
  // Intervals are recomputed per masked tile rather than kept: registers are the
  // scarce resource, and only edge tiles pay for the arithmetic.
  KeyInterval visible[2 * kMFrags];
  if constexpr (kMask != TileMask::kNone) {
#pragma unroll
    for (int r = 0; r < 2 * kMFrags; ++r) {
      visible[r] = visibility.of_query(query_row0 + (r / 2) * 16 + lane / 4 + 8 * (r % 2));
    }
  }
#pragma unroll
  for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
    for (int nb = 0; nb < kNFragsS; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float logit = s[mi][nb][e];
        if constexpr (kSoftCap) logit = p.soft_cap * fast_tanh(logit * p.pre_cap_scale);
        if constexpr (kMask != TileMask::kNone) {
          const KeyInterval keys = visible[2 * mi + e / 2];  // c0,c1: row g; c2,c3: row g + 8
          const int key = key0 + nb * 8 + (lane % 4) * 2 + e % 2;
          const bool seen = kMask == TileMask::kEnd ? key < keys.end : key >= keys.begin && key < keys.end;
          logit = seen ? logit : -INFINITY;  // select, never add
        }
        s[mi][nb][e] = logit;
      }
}

}  // namespace torch_attn
