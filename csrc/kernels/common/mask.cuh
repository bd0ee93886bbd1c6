// Which keys a query sees, in one place.
//
// Queries and keys are indexed within their sequence. Causal masks are aligned
// bottom-right: with diag = kv_len - qo_len, query i sees key j iff
//     j < kv_len                               (the sequence's keys)
//     causal      -> j <= i + diag             (no key after the query's position)
//     window >= 0 -> j >= i + diag - window    (sliding window of window_left keys)
//     chunk > 0   -> j / chunk == (i + diag) / chunk  (chunked attention, floor division:
//                    a query before key 0 sees nothing)
// For one query the visible keys are a single interval [begin, end), so the kernel
// computes it once per row and masks each score by a select on a bit of the row's
// seen scores (logits.cuh; only the end counts where the tile lies past every row's
// first visible key, TileMask).
#pragma once
#include <cstdint>
#include <type_traits>

namespace torch_attn {

struct KeyInterval {
  int begin;  // first visible key
  int end;    // one past the last visible key; end <= begin: the row sees nothing
};

struct VisibleKeys {
  int kv_len;
  int diag;  // kv_len - qo_len
  bool causal;
  int window_left;  // < 0: no window
  // Chunks (chunk_size 0: none). chunk_base is the first key of the chunk holding the work
  // item's first query (position 0 where that lies before key 0): every row the item asks
  // about lies at most chunk_size + 256 positions past it, so a float quotient of the
  // distance is off by at most one, and one integer step makes it exact — a handful of
  // instructions per row where an integer division is some twenty (and registers).
  int chunk_size;
  int chunk_base;
  float chunk_rcp;  // 1 / chunk_size

  /// chunk_base for a work item whose first row lies at `first_position` among the keys
  /// (negative: before key 0; clamped to [0, 2^31)).
  __host__ __device__ __forceinline__ static int chunk_base_of(int64_t first_position, int chunk_size) {
    const uint32_t position =
        static_cast<uint32_t>(first_position < 0 ? 0 : (first_position > INT32_MAX ? INT32_MAX : first_position));
    return static_cast<int>(position - position % static_cast<uint32_t>(chunk_size));
  }

  /// The first key of the chunk holding the key `distance` positions past chunk_base.
  __host__ __device__ __forceinline__ uint32_t chunk_start(uint32_t distance) const {
    const uint32_t size = static_cast<uint32_t>(chunk_size);
    const uint32_t quotient = static_cast<uint32_t>(static_cast<float>(distance) * chunk_rcp);
    uint32_t start = quotient * size;  // <= distance + size < 2^32
    if (start > distance)
      start -= size;
    else if (distance - start >= size)
      start += size;
    return static_cast<uint32_t>(chunk_base) + start;  // <= the query's position < 2^31 + 256
  }

  /// The keys query `i` sees. int64 inside: i + diag - window_left may overflow int32.
  __host__ __device__ __forceinline__ KeyInterval of_query(int i) const {
    const int64_t last = static_cast<int64_t>(i) + diag;  // the query's own position among the keys
    int64_t end = causal ? last + 1 : kv_len;
    int64_t begin = window_left >= 0 ? last - window_left : 0;
    if (chunk_size > 0) {
      // Every position >= 0 the item asks about lies at or after chunk_base; a query before
      // key 0 is taken at key 0 (within reach of chunk_base) and sees nothing.
      const uint32_t position = static_cast<uint32_t>(last > 0 ? last : 0);
      const uint32_t chunk_begin = chunk_start(position - static_cast<uint32_t>(chunk_base));
      const int64_t chunk_end = last >= 0 ? static_cast<int64_t>(chunk_begin) + chunk_size : 0;
      begin = begin > chunk_begin ? begin : chunk_begin;
      end = end < chunk_end ? end : chunk_end;
    }
    end = end < kv_len ? end : kv_len;
    begin = begin > 0 ? begin : 0;
    return {static_cast<int>(begin), static_cast<int>(end)};
  }
};

/// Which ends of the rows' visible-key intervals a tile's scores must be tested
/// against. Tiles after the unmasked run (the diagonal of a causal mask, the tile
/// reaching past kv_len) start at or after the first visible key of every row up to
/// the range's last (KvTileRange::of): only the end matters there, one compare per
/// score instead of two. Tiles before the run (a window's left edge) may also cross
/// a row's end when the window is narrow: both.
enum class TileMask { kNone, kEnd, kBoth };
// The kinds as types, for the kernels' per-kind instantiations of their tile steps.
using MaskNone = std::integral_constant<TileMask, TileMask::kNone>;
using MaskEnd = std::integral_constant<TileMask, TileMask::kEnd>;
using MaskBoth = std::integral_constant<TileMask, TileMask::kBoth>;

/// The K/V tiles [begin, begin + count) that a query tile with rows [q_row0, q_row0 +
/// rows) needs, and the run [full_begin, full_end) of them (counted from begin) in
/// which every row sees every key, so no score needs a mask. Both interval ends grow
/// with the row index, so the first row's end and the last row's begin bound what
/// any row in between sees.
struct KvTileRange {
  int begin;
  int count;
  int full_begin;
  int full_end;

  /// ceil(keys / kBlockN) for 0 <= keys < 2^31, in unsigned arithmetic: keys + kBlockN - 1 overflows int32
  /// for sequences within a tile of 2^31 keys.
  template <int kBlockN>
  __host__ __device__ __forceinline__ static int tiles_holding(int keys) {
    return static_cast<int>((static_cast<uint32_t>(keys) + (kBlockN - 1)) / kBlockN);
  }

  template <int kBlockN>
  __host__ __device__ __forceinline__ static KvTileRange of(const VisibleKeys& visibility, int q_row0, int rows) {
    const KeyInterval first_row = visibility.of_query(q_row0);
    const KeyInterval last_row = visibility.of_query(q_row0 + rows - 1);
    const int begin = first_row.begin / kBlockN;
    const int end = last_row.end > first_row.begin ? tiles_holding<kBlockN>(last_row.end) : begin;
    // Unmasked tiles: key0 >= the last row's first key and key0 + BN <= the first row's end.
    const int full_begin = min(max(begin, tiles_holding<kBlockN>(last_row.begin)), end) - begin;
    const int full_end = max(full_begin, min(end, first_row.end / kBlockN) - begin);
    return {begin, end - begin, full_begin, full_end};
  }

  /// The tiles [first, first + n) of this range (first + n <= count), with their unmasked run.
  __host__ __device__ __forceinline__ KvTileRange part(int first, int n) const {
    const int part_full_begin = min(max(full_begin - first, 0), n);
    return {begin + first, n, part_full_begin, min(max(full_end - first, part_full_begin), n)};
  }

  /// Whether tile j (counted from begin) has a hidden score.
  __host__ __device__ __forceinline__ bool needs_mask(int j) const { return j < full_begin || j >= full_end; }
};

}  // namespace torch_attn
