// Scores to logits for one warp's accumulator tile: soft cap, then the mask by select.
//
// Both the mma.sync and the wgmma kernels hold S in the same per-warp layout: each
// warp owns 16 * kMFrags query rows, and fragment [mi][nb][e] of a thread holds
// row 16 mi + g + 8 (e / 2), key 8 nb + 2 t + e % 2 (g = lane / 4, t = lane % 4).
#pragma once
#include <cmath>
#include "kernels/common/fast_math.cuh"
#include "kernels/common/mask.cuh"
#include "kernels/common/params.h"

namespace torch_attn {

/// Which of a thread's scores of one row lie on keys below `bound`, one bit each: the
/// thread holds keys 8 nb + 2 t + e % 2 of the tile (fragment nb, element e, t = lane % 4)
/// at bit 2 nb + e % 2. Keys grow with that index, so the keys below a bound form a prefix
/// of the bits: 2 floor(x / 8) + min(x % 8, 2) of them, x = bound - key0 - 2 t. A mask is
/// then one select per score on a bit (ptxas moves 7 bits at a time into predicates, R2P)
/// instead of a key computed and compared per score (twice with both ends): d64 causal
/// S=1024 +3.9%, S=4096 +4.3%, d128 causal S=512 +5.3%, a window of 1000 keys at d128
/// +6.4% (wgmma kernel, H100, ncu at base clocks); the mma.sync kernel even.
template <int kNFragsS>
__device__ __forceinline__ uint32_t scores_below_key(int bound, int key0, int lane) {
  static_assert(kNFragsS <= 16, "one bit per score of a row in 32 bits");
  const int x = bound - key0 - (lane % 4) * 2;
  if (x <= 0) return 0u;
  const unsigned n = min(2u * kNFragsS, 2u * (static_cast<unsigned>(x) / 8u) + min(static_cast<unsigned>(x) % 8u, 2u));
  return n >= 32u ? 0xffffffffu : (1u << n) - 1u;
}

/// query_row0: the sequence index of the warp's first query row; key0: the tile's first key.
template <bool kSoftCap, TileMask kMask, int kMFrags, int kNFragsS>
__device__ __forceinline__ void scores_to_logits(float (&s)[kMFrags][kNFragsS][4], const PrefillParams& p,
                                                 const VisibleKeys& visibility, int query_row0, int key0, int lane) {
  // Intervals are recomputed per masked tile rather than kept: registers are the
  // scarce resource, and only edge tiles pay for the arithmetic.
  uint32_t seen[2 * kMFrags];  // row r's scores that are seen, one bit each (scores_below_key)
  if constexpr (kMask != TileMask::kNone) {
#pragma unroll
    for (int r = 0; r < 2 * kMFrags; ++r) {
      const KeyInterval keys = visibility.of_query(query_row0 + (r / 2) * 16 + lane / 4 + 8 * (r % 2));
      seen[r] = scores_below_key<kNFragsS>(keys.end, key0, lane);
      if constexpr (kMask == TileMask::kBoth) seen[r] &= ~scores_below_key<kNFragsS>(keys.begin, key0, lane);
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
          // c0,c1: row g; c2,c3: row g + 8. Select, never add.
          logit = (seen[2 * mi + e / 2] >> (2 * nb + e % 2)) & 1u ? logit : -INFINITY;
        }
        s[mi][nb][e] = logit;
      }
}

}  // namespace torch_attn
