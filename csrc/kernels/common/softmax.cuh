// Online softmax over the S fragments of one warp, base 2.
//
// Each thread holds kRows = 2 * kMFrags query rows: rows g and g + 8 of every m16
// fragment (g = lane / 4), with the row's scores spread over the 4 lanes of a
// quad. For one row, after the keys of tiles 0..j:
//     m = a visible logit so far, at most 8 / c below their max (lazy rescaling;
//         -inf while none was visible)
//     l = sum over those keys of exp2((logit - m) * c)      c = logit_to_log2 > 0
//     O = sum over those keys of exp2((logit - m) * c) * V[key]
// and out = O / l, lse = (m * c + log2 l) * ln 2 (natural log, as FlashAttention).
//
// The -inf guard: while a row has seen no visible key its new max is -inf, and
// exp2(logit - max) would be exp2(-inf - -inf) = NaN. Subtracting 0 instead gives
// exp2(-inf) = 0 for every masked score and keeps l = 0 and O = 0.
#pragma once
#include <cmath>
#include "kernels/common/fast_math.cuh"

namespace torch_attn {

template <int kMFrags>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * kMFrags;
  // The largest weight P that m may leave (as a power of 2): 256, far inside fp16's
  // range (65504) also as P times a V element in the products' fp32 sums.
  static constexpr float kMaxWeightLog2 = 8.f;
  float row_max[kRows];  // m, in logit units
  float row_sum[kRows];  // l: this lane's share; the quad's 4 shares are added in finalize()

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  /// One row's logits in s (half 0: row g of fragment mi, c0 and c1; half 1: row g + 8,
  /// c2 and c3) -> weights exp2(logit * c - max_scaled) in place; returns this thread's
  /// share of their sum.
  template <int kNFragsS>
  __device__ __forceinline__ static float row_to_weights(float (&s)[kMFrags][kNFragsS][4], int mi, int half,
                                                         float logit_to_log2, float max_scaled) {
    float sum = 0.f;
#pragma unroll
    for (int nb = 0; nb < kNFragsS; ++nb) {
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        s[mi][nb][e] = fast_exp2(fmaf(s[mi][nb][e], logit_to_log2, -max_scaled));
        sum += s[mi][nb][e];
      }
    }
    return sum;
  }

  /// Takes a tile of logits s (masked ones are -inf) and turns them into weights
  /// P = exp2((s - m) * c) in place, rescaling l when m moves. O must then be
  /// multiplied by the same factor: for each row r, on_row(r, rescale, moves) is
  /// called once its factor is known (moves: whether this thread's row moved).
  ///
  /// Lazy rescaling: m only moves when the tile's max exceeds it by more than
  /// lazy_rescale_log2 (in log2 units), or when the row had no max yet. Otherwise
  /// the old m stays and weights may reach 2^lazy_rescale_log2, harmless in fp32
  /// (l, O) and in bf16/fp16 (P) up to 2^kMaxWeightLog2. out = O / l and lse are
  /// exact either way, since O and l always share one m. On most tiles no row of
  /// the warp moves and the warp skips the O *= rescale multiplies (a third of the
  /// non-MMA work).
  template <int kNFragsS, class OnRow>
  __device__ __forceinline__ void logits_to_weights(float (&s)[kMFrags][kNFragsS][4], float logit_to_log2,
                                                    float lazy_rescale_log2, OnRow&& on_row) {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // row g uses c0,c1; row g+8 uses c2,c3
        const int r = 2 * mi + half;
        float tile_max = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kNFragsS; ++nb) {
          tile_max = fmaxf(tile_max, fmaxf(s[mi][nb][2 * half], s[mi][nb][2 * half + 1]));
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        // From -inf to a finite max the difference is +inf: the first visible key always moves m.
        // From -inf to -inf it is NaN: nothing visible yet, m stays -inf.
        const bool moves = (tile_max - row_max[r]) * logit_to_log2 > lazy_rescale_log2;
        const float new_max = moves ? tile_max : row_max[r];
        // The -inf guard (see above): subtract 0 while the row has seen nothing.
        const float max_scaled = new_max == -INFINITY ? 0.f : new_max * logit_to_log2;
        const float rescale = moves ? fast_exp2(row_max[r] * logit_to_log2 - max_scaled) : 1.f;  // 0 from -inf
        row_max[r] = new_max;
        row_sum[r] = row_sum[r] * rescale + row_to_weights(s, mi, half, logit_to_log2, max_scaled);
        on_row(r, rescale, moves);
      }
    }
  }

  /// logits_to_weights without waiting for the tile's max: the weights are taken at
  /// the rows' current max m, P = exp2((s - m) * c). Where this thread's share of each
  /// of its rows' weights stays at most 2^kMaxWeightLog2, so does each weight, and m
  /// need not move (lazy rescaling as in logits_to_weights). all_threads(bounded) tells
  /// whether that holds in every thread that decides together; if so, l takes the
  /// tile's weights, O needs no rescale, and this returns true. That is the case on
  /// almost every tile, and it saves the max (an instruction per score, two shuffles
  /// per row) and the exponentials' wait for it. Otherwise (a row's new logits exceed
  /// its max by kMaxWeightLog2 / c, or less where many do: the test is on the share, a
  /// sum of 2 kNFragsS weights; or the row had no max yet: its exponents are then +inf
  /// or NaN, and the test fails on both) it returns false with l
  /// untouched and s no longer holding logits: the caller computes them again and
  /// takes logits_to_weights.
  template <int kNFragsS, class AllThreads>
  __device__ __forceinline__ bool weights_at_current_max(float (&s)[kMFrags][kNFragsS][4], float logit_to_log2,
                                                         AllThreads&& all_threads) {
    constexpr float kMaxShare = 1 << static_cast<int>(kMaxWeightLog2);
    float tile_sum[kRows];
    bool bounded = true;
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // row g uses c0,c1; row g+8 uses c2,c3
        const int r = 2 * mi + half;
        tile_sum[r] = row_to_weights(s, mi, half, logit_to_log2, row_max[r] * logit_to_log2);
        bounded &= tile_sum[r] <= kMaxShare;  // (false for NaN)
      }
    }
    if (!all_threads(bounded)) return false;
#pragma unroll
    for (int r = 0; r < kRows; ++r) row_sum[r] += tile_sum[r];
    return true;
  }

  /// O *= rescale for row r (rows 16 mi + g and 16 mi + g + 8 of the warp).
  template <int kNFragsO>
  __device__ __forceinline__ static void rescale_row(float (&o)[kMFrags][kNFragsO][4], int r, float rescale) {
#pragma unroll
    for (int nd = 0; nd < kNFragsO; ++nd) {
      o[r / 2][nd][2 * (r % 2)] *= rescale;
      o[r / 2][nd][2 * (r % 2) + 1] *= rescale;
    }
  }

  /// logits_to_weights with O rescaled right away, row by row, where a row of the
  /// warp moved (a warp-uniform branch).
  template <int kNFragsS, int kNFragsO>
  __device__ __forceinline__ void update(float (&s)[kMFrags][kNFragsS][4], float (&o)[kMFrags][kNFragsO][4],
                                         float logit_to_log2) {
    logits_to_weights(s, logit_to_log2, kMaxWeightLog2, [&](int r, float rescale, bool moves) {
      if (__any_sync(0xffffffffu, moves)) rescale_row(o, r, rescale);
    });
  }

  /// O /= l (0 for rows that saw no key) and the natural-log LSE of each row
  /// (-inf for rows that saw no key).
  template <int kNFragsO>
  __device__ __forceinline__ void finalize(float (&o)[kMFrags][kNFragsO][4], float logit_to_log2, float (&lse)[kRows]) {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 2 * mi + half;
        float sum = row_sum[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const bool saw_keys = sum > 0.f;
        // A row that saw a key has sum >= 1 (the key that set its max weighs 1) and far
        // below 2^126: the fast reciprocal (no slow path for tiny or huge values) is exact enough.
        const float inv_sum = saw_keys ? __fdividef(1.f, sum) : 0.f;
        lse[r] = saw_keys ? (row_max[r] * logit_to_log2 + __log2f(sum)) * 0.69314718055994530942f : -INFINITY;
#pragma unroll
        for (int nd = 0; nd < kNFragsO; ++nd) {
          o[mi][nd][2 * half] *= inv_sum;
          o[mi][nd][2 * half + 1] *= inv_sum;
        }
      }
    }
  }

  /// Attention sinks, on finalized rows (o normalized, natural-log lse): one more key whose
  /// logit is `sink` and whose value is 0 enters only the denominator, so
  /// lse' = logaddexp(lse, sink) and o *= e^(lse - lse'). In that form no exponent can
  /// overflow, and a row that sees no key gets o = 0, lse' = sink.
  template <int kNFragsO>
  __device__ __forceinline__ static void add_sink(float (&o)[kMFrags][kNFragsO][4], float (&lse)[kRows], float sink) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float max = fmaxf(lse[r], sink);
      if (max == -INFINITY) continue;  // neither keys nor a sink (of -inf): o stays 0, lse -inf
      const float with_sink = max + log1pf(__expf(-fabsf(lse[r] - sink)));
      const float scale = __expf(lse[r] - with_sink);
      lse[r] = with_sink;
#pragma unroll
      for (int nd = 0; nd < kNFragsO; ++nd) {
        o[r / 2][nd][2 * (r % 2)] *= scale;
        o[r / 2][nd][2 * (r % 2) + 1] *= scale;
      }
    }
  }
};

}  // namespace torch_attn
