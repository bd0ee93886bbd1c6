// The tail split of the wgmma kernel's persistent grid: the plan the host makes and
// the kernel follows. No torch and no CUDA headers.
//
// The problem. A dense batch without a causal mask or window has N work items of
// equal cost (T K/V tiles each) for P CTAs, which claim them in order. The last
// R = N mod P items start when the other CTAs are about to run out of work, and
// fewer items than SMs (N < P: R = N) leave P - N SMs idle throughout. Measured
// (H100, fixed base clocks, d128, items of 128 tiles): 1980 items (15 rounds) took
// 3474 us, 1981 took 3579 (one item more: +3%), 2012 3509 and 2048 3515: CTAs
// finish their rounds up to about half an item apart, so a late item costs most
// where only a few are left over; and 64 items (256 queries x 32 heads against 32k
// keys) kept 68 of 132 SMs idle.
//
// The split. Where R <= P / 2, each of the R tail items runs as k = P / R pieces of
// ceil(T / k) tiles (the last one shorter), claimed after the whole items in piece-major order (piece 0 of every
// tail item, then piece 1, ...). Pieces start at the same key offsets in every item,
// so the query heads of one K/V head (GQA) read the same keys at the same time and
// share them in L2. (Pieces cut from the tail items' tiles laid end to end, at
// offsets that differed from item to item, read each K/V head from DRAM once per
// query head: 64 items ran 1.29x faster instead of about 2x, bound by DRAM.) Each
// piece computes its rows' softmax over its own tiles and writes out and lse to its
// workspace slot (out normalised by the piece's own sum); the piece that arrives
// last at its item, counted per consumer warp, merges all of the item's slots in
// slot order, so the result is the same bits whichever piece comes last.
#pragma once
#include <climits>
#include <cstdint>

#if defined(__CUDACC__)
#define TORCH_ATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TORCH_ATTN_HOST_DEVICE inline
#endif

namespace torch_attn {

struct TailSplit {
  int32_t first_item;   // items [first_item, N) are the tail; first_item == N: no split
  int32_t claims;       // whole items, then first_item + (N - first_item) * pieces pieces
  int32_t pieces;       // k: pieces per tail item
  int32_t piece_tiles;  // ceil(T / k): piece q holds tiles [q * piece_tiles, (q + 1) * piece_tiles) of T
  int32_t item_tiles;   // T
  // Workspace, for slot (tail item r, piece q) = r * pieces + q and consumer warp w:
  // out at partial_out[((slot * warps + w) * frags + f) * 32 + lane] (float4: a thread's
  // fragment f of O), lse at partial_lse[(slot * warps + w) * 16 + row of the warp].
  float* partial_out;
  float* partial_lse;
  int32_t* arrivals;  // [tail item][consumer warp]: pieces done, zeroed before each launch
};

/// No split: every claim is a whole item.
inline TailSplit no_tail_split(int32_t items) {
  TailSplit s{};
  s.first_item = s.claims = items;
  return s;
}

/// The split for `items` work items of `item_tiles` K/V tiles each, all of the same
/// cost, on `ctas` persistent CTAs; no_tail_split where it would not pay. Measured
/// (H100, base clocks, A/B with TORCH_ATTN_TAIL_SPLIT, pieces cut end to end): the
/// split lost 1-2% where a piece was 9-33 tiles shorter than an item (pieces pay
/// their own pipeline fill, Q load and merge), and gained 2-3% where it was 62 or
/// more shorter and a few items were left over: split where a piece saves at least
/// kMinSavedTiles, into pieces of at least kMinPieceTiles.
inline TailSplit plan_tail_split(int64_t items, int64_t ctas, int64_t item_tiles) {
  constexpr int64_t kMinPieceTiles = 4, kMinSavedTiles = 32;
  TailSplit s = no_tail_split(static_cast<int32_t>(items));
  const int64_t tail = ctas > 0 ? items % ctas : 0;  // (all of them when items < ctas)
  if (tail == 0 || 2 * tail > ctas || items > INT32_MAX - ctas) return s;
  int64_t pieces = ctas / tail;
  pieces = pieces < item_tiles / kMinPieceTiles ? pieces : item_tiles / kMinPieceTiles;
  if (pieces < 2) return s;
  const int64_t piece_tiles = (item_tiles + pieces - 1) / pieces;
  if (item_tiles - piece_tiles < kMinSavedTiles) return s;
  pieces = (item_tiles + piece_tiles - 1) / piece_tiles;  // (none of them empty)
  s.first_item = static_cast<int32_t>(items - tail);
  s.claims = static_cast<int32_t>(s.first_item + tail * pieces);  // <= items + ctas: fits int32
  s.pieces = static_cast<int32_t>(pieces);
  s.piece_tiles = static_cast<int32_t>(piece_tiles);
  s.item_tiles = static_cast<int32_t>(item_tiles);
  return s;
}

}  // namespace torch_attn
