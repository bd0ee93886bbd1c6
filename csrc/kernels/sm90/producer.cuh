// The wgmma kernel's producer (warpgroup 0): two warps drive the copy engine, warp 0 for Q and K,
// warp 1 for V, into the stages of shared memory, and announce each tile on its mbarrier.
#pragma once
#include <cstdint>
#include <type_traits>
#include "kernels/common/params.h"
#include "kernels/sm90/item_tiles.cuh"
#include "kernels/sm90/mbarrier.cuh"
#include "kernels/sm90/tma.cuh"

namespace torch_attn {

template <class Traits, bool kPaged, bool kChunked>
struct Sm90Producer : Sm90Item<Traits, kPaged, kChunked> {
  using Item = Sm90Item<Traits, kPaged, kChunked>;
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
};

}  // namespace torch_attn
