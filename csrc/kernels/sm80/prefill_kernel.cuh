// The prefill kernel (sm_80+): FlashAttention-2's algorithm on cp.async + mma.sync.
//
// One CTA computes one query tile [BM rows] of one head of one sequence. Its Q
// tile stays in shared memory; K and V tiles [BN keys] stream through a ring of
// kStages buffers filled by cp.async; each warp owns BM / warps query rows:
//     S = Q K_j^T                       (mma.sync m16n8k16, fp32 accumulate)
//     S = soft_cap(S), masked by select (softmax.cuh, mask.cuh)
//     O += P V_j                        (online softmax rescales O first)
// and finally out = O / l, lse.
//
// Reading past valid data:
//   * Q, K and V rows past the sequence's end are never read from global memory:
//     cp.async writes zeros instead. For V this is required, not just tidy: those
//     keys get weight P = 0, but 0 * NaN and 0 * inf are NaN, so one garbage V row
//     in shared memory (stale data, or the next sequence's padding) would poison
//     every output row. K rows there only reach S, whose masked scores are
//     replaced by -inf through a select, never by adding -inf to garbage.
//   * Head-dim columns past D (the tile is wider than D) enter every dot product,
//     so they are zero in Q, K and V alike (past head_dim_qk in Q and K, past
//     head_dim_v in V: its O columns are then zero and never stored).
//   * In a paged cache the same holds for the tail of a sequence's last page and
//     for pages it does not name: rows past kv_len are zero-filled, not looked up.
#pragma once
#include <cstdint>
#include <type_traits>
#include "kernels/common/epilogue.cuh"
#include "kernels/common/fast_math.cuh"
#include "kernels/common/fp8_convert.cuh"
#include "kernels/common/logits.cuh"
#include "kernels/common/mask.cuh"
#include "kernels/common/params.h"
#include "kernels/common/softmax.cuh"
#include "kernels/common/work_item.cuh"
#include "kernels/sm80/cp_async.cuh"
#include "kernels/sm80/mma.cuh"
#include "kernels/sm80/page_table.cuh"
#include "kernels/sm80/prefill_traits.cuh"
#include "kernels/common/named_barrier.cuh"

namespace torch_attn {

/// Lanes that share a tile row in the copies: the row's 16-byte chunks rounded up to a power of
/// two (rows of fp8 codes at width 64 have 4 chunks; bf16 rows 8 to 64), at most a warp.
constexpr int lanes_per_row(int chunks) { return chunks <= 4 ? 4 : chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32; }

/// Which 16-byte pieces of a tile a thread copies: a thread keeps one 16-byte
/// column (chunk) and walks down the rows, kRowsPerPass at a time. Rows of 12 or 24
/// chunks (widths 96, 192) are mapped as 16 or 32, and the threads on the missing
/// columns idle; rows of more than 32 chunks (width 512) take kChunkSteps columns a warp apart.
template <class Tile, int kThreads>
struct TileLoadMapping {
  static constexpr int kLanesPerRow = lanes_per_row(Tile::kChunksPerRow);
  static constexpr int kChunkSteps = (Tile::kChunksPerRow + kLanesPerRow - 1) / kLanesPerRow;
  static constexpr int kRowsPerPass = kThreads / kLanesPerRow;
  static constexpr int kPasses = Tile::kRows / kRowsPerPass;
  static_assert(Tile::kChunksPerRow <= kLanesPerRow * kChunkSteps && kThreads % kLanesPerRow == 0, "thread mapping");
  static_assert(kChunkSteps == 1 || Tile::kChunksPerRow % kLanesPerRow == 0, "several steps only over whole rows");
  static_assert(Tile::kRows % kRowsPerPass == 0, "passes cover the tile exactly");
  const int chunk = static_cast<int>(threadIdx.x) % kLanesPerRow;
  const int row0 = static_cast<int>(threadIdx.x) / kLanesPerRow;
  __device__ __forceinline__ bool idle() const { return chunk >= Tile::kChunksPerRow; }
};

/// Copies rows [0, rows_valid) x chunks [0, chunks_valid) of a global tile with
/// rows `row_stride` apart into a shared tile, and zero-fills every other row and
/// chunk (see the header comment). The global address advances by a fixed stride
/// per pass: one 64-bit add, instead of a row * stride product per chunk that the
/// compiler would hoist into dozens of live registers.
template <class Tile, int kThreads, typename Elem>
__device__ __forceinline__ void load_tile_or_zero(Elem* smem, const Elem* gmem, int64_t row_stride, int rows_valid,
                                                  int chunks_valid) {
  using Map = TileLoadMapping<Tile, kThreads>;
  const Map map;
  if (map.idle()) return;
  const Elem* src = gmem + map.row0 * row_stride + map.chunk * Tile::kElemsPerChunk;
#pragma unroll
  for (int pass = 0; pass < Map::kPasses; ++pass) {
    const int row = map.row0 + pass * Map::kRowsPerPass;
#pragma unroll
    for (int step = 0; step < Map::kChunkSteps; ++step) {
      const int chunk = map.chunk + step * Map::kLanesPerRow;
      const bool in_bounds = row < rows_valid && chunk < chunks_valid;
      // A false predicate reads nothing, but the address must stay valid: the tile's first row.
      cp_async_16_or_zero(smem + Tile::offset(row, chunk * Tile::kElemsPerChunk),
                          in_bounds ? src + step * Map::kLanesPerRow * Tile::kElemsPerChunk : gmem, in_bounds);
    }
    src += Map::kRowsPerPass * row_stride;
  }
}

/// fp8 q: the Q tile `Tile` (compute dtype) from fp8 codes, read with plain loads (once per CTA, so
/// nothing to overlap) and converted on the way; rows past rows_valid and 16-code chunks past
/// chunks_valid are zero, as load_tile_or_zero leaves them. The caller's barrier publishes it.
template <class Tile, int kThreads, typename DType>
__device__ __forceinline__ void load_code_tile_converted(DType* smem, const uint8_t* gmem, int64_t row_stride,
                                                         int rows_valid, int chunks_valid, ElementFormat format) {
  using Codes = CodeTile<Tile::kRows, Tile::kHeadDim>;
  using Map = TileLoadMapping<Codes, kThreads>;
  static_assert(Map::kChunkSteps == 1, "rows of codes up to width 512 are one warp's chunks");
  const Map map;
  if (map.idle()) return;
  const uint8_t* src = gmem + map.row0 * row_stride + map.chunk * Codes::kElemsPerChunk;
#pragma unroll 1
  for (int pass = 0; pass < Map::kPasses; ++pass) {
    const int row = map.row0 + pass * Map::kRowsPerPass;
    const uint4 codes = row < rows_valid && map.chunk < chunks_valid ? __ldg(reinterpret_cast<const uint4*>(src))
                                                                     : make_uint4(0, 0, 0, 0);
    uint4 values[2];
    fp8x16_to<DType>(codes, format, values);
    uint4* dst = reinterpret_cast<uint4*>(smem + Tile::offset(row, map.chunk * Codes::kElemsPerChunk));
    dst[0] = values[0];
    dst[1] = values[1];
    src += Map::kRowsPerPass * row_stride;
  }
}

/// Paged tiles: warp w copies the tile's rows [w, w + 1) * kRowsPerWarp, whole rows
/// per instruction (coalesced like the contiguous copy). When the page size is a
/// multiple of kRowsPerWarp those rows share one page (tiles and row blocks start
/// at multiples of it), so a thread needs one page id per tile, which the caller
/// looks up a tile ahead, and walks its rows with a 64-bit add per pass. Other
/// page sizes (below kRowsPerWarp, or not a multiple) look each row up.
template <class Tile, int kThreads>
struct PagedTileMapping {
  static constexpr int kRowsPerWarp = Tile::kRows / (kThreads / 32);
  static constexpr int kLanesPerRow = lanes_per_row(Tile::kChunksPerRow);
  static constexpr int kChunkSteps = (Tile::kChunksPerRow + kLanesPerRow - 1) / kLanesPerRow;  // as TileLoadMapping's
  static constexpr int kRowsPerPass = 32 / kLanesPerRow;
  static constexpr int kPasses = kRowsPerWarp / kRowsPerPass;
  static_assert(Tile::kRows % (kThreads / 32) == 0 && kRowsPerWarp % kRowsPerPass == 0, "whole rows per warp");
  /// The first row of this warp's block (whose page the caller looks up).
  __device__ __forceinline__ static int first_row() { return static_cast<int>(threadIdx.x) / 32 * kRowsPerWarp; }
  __device__ __forceinline__ static int lane_row() { return static_cast<int>(threadIdx.x) % 32 / kLanesPerRow; }
  __device__ __forceinline__ static int chunk() { return static_cast<int>(threadIdx.x) % kLanesPerRow; }
  __device__ __forceinline__ static bool one_page_per_warp(const PrefillParams& p) {
    return p.page_size % kRowsPerWarp == 0;
  }
};

/// As load_tile_or_zero, for keys key0.. of a paged cache; page_id: the page of this
/// warp's first row (used when the warp's rows share a page). Rows past kv_len are
/// zero-filled and never looked up.
template <class Tile, int kThreads, typename Elem>
__device__ __forceinline__ void load_paged_tile_or_zero(Elem* smem, const Elem* head_base, const PageTable& table,
                                                        int32_t page_id, int64_t page_stride, int64_t slot_stride,
                                                        int key0, int rows_valid, int chunks_valid) {
  using Map = PagedTileMapping<Tile, kThreads>;
  const int chunk = Map::chunk();
  if (chunk >= Tile::kChunksPerRow) return;  // widths 96 and 192 leave some lanes idle
  const int row0 = Map::first_row() + Map::lane_row();
  if (Map::one_page_per_warp(table.p)) {
    const int block_key = key0 + Map::first_row();
    const Elem* src = head_base + table.offset(block_key, page_id, page_stride, slot_stride) +
                      Map::lane_row() * slot_stride + chunk * Tile::kElemsPerChunk;
#pragma unroll
    for (int pass = 0; pass < Map::kPasses; ++pass) {
      const int row = row0 + pass * Map::kRowsPerPass;
#pragma unroll
      for (int step = 0; step < Map::kChunkSteps; ++step) {
        const int col_chunk = chunk + step * Map::kLanesPerRow;
        const bool in_bounds = row < rows_valid && col_chunk < chunks_valid;
        // A false predicate reads nothing; the address stays at a row of a named page or at head_base.
        cp_async_16_or_zero(smem + Tile::offset(row, col_chunk * Tile::kElemsPerChunk),
                            in_bounds ? src + step * Map::kLanesPerRow * Tile::kElemsPerChunk : head_base, in_bounds);
      }
      src += Map::kRowsPerPass * slot_stride;
    }
    return;
  }
  // The slow path (pages smaller than a warp's rows) stays rolled: unrolled, its
  // lookups and addresses took registers the rest of the kernel needs.
#pragma unroll 1
  for (int pass = 0; pass < Map::kPasses; ++pass) {
    const int row = row0 + pass * Map::kRowsPerPass;
#pragma unroll
    for (int step = 0; step < Map::kChunkSteps; ++step) {
      const int col_chunk = chunk + step * Map::kLanesPerRow;
      const bool in_bounds = row < rows_valid && col_chunk < chunks_valid;
      const Elem* src = in_bounds ? head_base +
                                        table.offset(key0 + row, table.page_id(key0 + row), page_stride, slot_stride) +
                                        col_chunk * Tile::kElemsPerChunk
                                  : head_base;
      cp_async_16_or_zero(smem + Tile::offset(row, col_chunk * Tile::kElemsPerChunk), src, in_bounds);
    }
  }
}

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
struct PrefillCta {
  using DType = typename Traits::DType;
  using KVElem = typename Traits::KVElem;  // DType, or fp8 codes
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using KVStageTile = typename Traits::KVStageTile;
  static constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kStages = Traits::kStages;
  static constexpr int kMFrags = Traits::kMFrags, kNFragsS = Traits::kNFragsS, kNFragsO = Traits::kNFragsO;
  static constexpr int kThreads = Traits::kThreads;
  static constexpr bool kFp8KV = Traits::kFp8KV;
  static constexpr int kDimSplits = Traits::kDimSplits, kSplitDim = Traits::kSplitDim;

  const PrefillParams& p;
  const WorkItem& w;
  DType* q_smem;
  KVElem* k_ring;        // kStages K tiles as cp.async fills them
  KVElem* v_ring;        // kStages V tiles
  const KVElem* k_gmem;  // key 0 of this sequence and KV head (paged: the cache at this KV head)
  const KVElem* v_gmem;
  const int32_t* pages;  // paged caches only: this sequence's block-table row
  float* exchange;       // split dims only: the warps' partial scores (PrefillTraits::kExchangeBytes)
  int lane, warp_row0;   // warp_row0: the warp's first row in the query tile

  /// Split dims: which of its row block's warps this one is; it owns dims [dim0(), dim0() + kSplitDim).
  __device__ __forceinline__ static int split() {
    return kDimSplits == 1 ? 0 : static_cast<int>(threadIdx.x) / 32 / Traits::kRowWarps;
  }
  __device__ __forceinline__ static int dim0() { return split() * kSplitDim; }

  // 16-byte chunks of real head dim of k and of v in the ring's element type (fp8 codes: 16 a
  // chunk), and of q and out in the compute dtype (8 a chunk): read from the kernel's parameters at
  // each use (kept in registers, the second count made ptxas spill more).
  __device__ __forceinline__ int qk_chunks_valid() const { return p.head_dim_qk / KVStageTile::kElemsPerChunk; }
  __device__ __forceinline__ int v_chunks_valid() const { return p.head_dim_v / KVStageTile::kElemsPerChunk; }
  __device__ __forceinline__ int q_chunks_valid() const { return p.head_dim_qk / QTile::kElemsPerChunk; }
  __device__ __forceinline__ int out_chunks_valid() const { return p.head_dim_v / QTile::kElemsPerChunk; }

  /// Issues the cp.async copies of K (or V) tile `tile` into ring stage `stage`, of its
  /// first `chunks_valid` 16-byte chunks (the rest zero-filled).
  /// page_id: paged caches only, the page of this thread's row of the tile.
  __device__ __forceinline__ void load_kv(KVElem* ring, const KVElem* gmem, const TokenHeadStrides& strides, int tile,
                                          int stage, int32_t page_id, int chunks_valid) const {
    const int key0 = tile * kBlockN;
    if constexpr (kPaged) {
      load_paged_tile_or_zero<KVStageTile, kThreads>(ring + stage * KVStageTile::kElems, gmem, PageTable{p, pages},
                                                     page_id, strides.batch, strides.token, key0, w.kv_len - key0,
                                                     chunks_valid);
    } else {
      load_tile_or_zero<KVStageTile, kThreads>(ring + stage * KVStageTile::kElems, gmem + key0 * strides.token,
                                               strides.token, w.kv_len - key0, chunks_valid);
    }
  }

  /// fp8 K/V: the converted K (operand_index 0) or V (1) tile the MMAs read; they follow the Q tile
  /// (prefill_kernel's layout). Otherwise the MMAs read the ring's stages as cp.async filled them.
  __device__ __forceinline__ DType* operand_tile(int operand_index) const {
    return q_smem + QTile::kElems + operand_index * KVTile::kElems;
  }

  /// fp8 K/V: converts the chunks of ring stage `stage` that this thread copied (with the copies' own
  /// mapping: its cp.async wait completed them; the barrier after this call publishes the result) into
  /// operand tile `operand_index`, whose previous tile every warp is done with (process_tile's
  /// barriers). Zero-filled codes convert to zeros, so the tile keeps the zero-fill rule.
  __device__ __forceinline__ void convert_own_chunks(const KVElem* ring, int operand_index, int stage) const {
    using Map =
        std::conditional_t<kPaged, PagedTileMapping<KVStageTile, kThreads>, TileLoadMapping<KVStageTile, kThreads>>;
    static_assert(Map::kChunkSteps == 1, "rows of codes up to width 512 are one warp's chunks");
    const int chunk = static_cast<int>(threadIdx.x) % Map::kLanesPerRow;
    if (chunk >= KVStageTile::kChunksPerRow) return;
    int row0;  // the first row this thread copies
    if constexpr (kPaged) {
      row0 = Map::first_row() + Map::lane_row();
    } else {
      row0 = Map{}.row0;
    }
    const KVElem* codes = ring + stage * KVStageTile::kElems;
    DType* operand = operand_tile(operand_index);
    // Rolled: unrolled, the passes' converted values took registers the S and O fragments need.
#pragma unroll 1
    for (int pass = 0; pass < Map::kPasses; ++pass) {
      const int row = row0 + pass * Map::kRowsPerPass;
      const int col = chunk * KVStageTile::kElemsPerChunk;
      uint4 values[2];
      fp8x16_to<DType>(*reinterpret_cast<const uint4*>(codes + KVStageTile::offset(row, col)), p.kv_format, values);
      uint4* dst = reinterpret_cast<uint4*>(operand + KVTile::offset(row, col));
      dst[0] = values[0];
      dst[1] = values[1];
    }
  }

  /// fp8: the real scores are q_descale * k_descale * (codes' q . k). Read where used (cached loads):
  /// kept in a register through the loop, it cost the fp8 kernel spills.
  __device__ __forceinline__ float qk_descale() const {
    return descale_of(p.q_descale, w.qo_head) * descale_of(p.k_descale, w.qo_head / p.group_size);
  }

  /// Paged caches: the page of this warp's first row of tile `tile` (0 where it is
  /// never used: past kv_len, past the last tile, or when rows are looked up one by one).
  __device__ __forceinline__ int32_t row_page_id(int tile, int tile_end) const {
    using Map = PagedTileMapping<KVTile, kThreads>;
    const int key = tile * kBlockN + Map::first_row();
    return kPaged && tile < tile_end && key < w.kv_len && Map::one_page_per_warp(p) ? PageTable{p, pages}.page_id(key)
                                                                                    : 0;
  }

  /// S = Q K^T for this warp's rows and the K tile in `k_stage` (split dims: summed over the row
  /// block's warps, each of which computes the terms of its own dims).
  __device__ __forceinline__ void compute_scores(const DType* k_stage, float (&s)[kMFrags][kNFragsS][4]) const {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nb = 0; nb < kNFragsS; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][nb][e] = 0.f;
    const DType* q_dims = q_smem + dim0();
    const DType* k_dims = k_stage + dim0();
#pragma unroll
    for (int kk = 0; kk < kSplitDim / 16; ++kk) {
      uint32_t q_frag[kMFrags][4];
#pragma unroll
      for (int mi = 0; mi < kMFrags; ++mi) {
        // lanes 0-15: rows 0-15 at dims 0-7; lanes 16-31: rows 0-15 at dims 8-15 -> a0..a3
        ldmatrix_x4(q_frag[mi], q_dims + QTile::offset(warp_row0 + mi * 16 + lane % 16, kk * 16 + (lane / 16) * 8));
      }
#pragma unroll
      for (int nb = 0; nb < kNFragsS; nb += 2) {
        // matrices: keys 0-7 | dims 0-7, keys 0-7 | dims 8-15, keys 8-15 | dims 0-7, keys 8-15 | dims 8-15
        // -> b0, b1 of key fragment nb, then b0, b1 of key fragment nb + 1
        uint32_t k_frag[4];
        ldmatrix_x4(k_frag,
                    k_dims + KVTile::offset(nb * 8 + lane % 8 + (lane / 16) * 8, kk * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
        for (int mi = 0; mi < kMFrags; ++mi) {
          mma_m16n8k16_f32<DType>(s[mi][nb], q_frag[mi], k_frag[0], k_frag[1]);
          mma_m16n8k16_f32<DType>(s[mi][nb + 1], q_frag[mi], k_frag[2], k_frag[3]);
        }
      }
    }
    if constexpr (kDimSplits > 1) sum_split_scores(s);
  }

  /// Split dims: every warp of a row block holds partial scores of the same (row, key) pairs at the
  /// same lanes; each publishes its part and adds up all parts in split order, so the block's warps
  /// hold bitwise equal scores (and take equal softmax steps). The exchange is rewritten one tile
  /// later, after the K barrier that every warp reaches only when done reading it.
  __device__ __forceinline__ void sum_split_scores(float (&s)[kMFrags][kNFragsS][4]) const {
    constexpr int kScores = Traits::kScoresPerThread, kRowWarps = Traits::kRowWarps;
    const int warp = static_cast<int>(threadIdx.x) / 32, row_warp = warp % kRowWarps;
    float* mine = exchange + warp * kScores * 32 + lane;
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nb = 0; nb < kNFragsS; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[((mi * kNFragsS + nb) * 4 + e) * 32] = s[mi][nb][e];
    named_barrier_sync(1 + row_warp, 32 * kDimSplits);  // the row block's warps only (id 0: __syncthreads)
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nb = 0; nb < kNFragsS; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int at = ((mi * kNFragsS + nb) * 4 + e) * 32;
          float sum = exchange[row_warp * kScores * 32 + lane + at];
#pragma unroll
          for (int part = 1; part < kDimSplits; ++part) {
            sum += exchange[(part * kRowWarps + row_warp) * kScores * 32 + lane + at];
          }
          s[mi][nb][e] = sum;
        }
  }

  /// O += P V for the V tile in `v_stage`; P comes from the score registers.
  __device__ __forceinline__ void accumulate_pv(const DType* v_stage, const float (&s)[kMFrags][kNFragsS][4],
                                                float (&o)[kMFrags][kNFragsO][4]) const {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      // The C fragments of key blocks 2kk, 2kk+1 are exactly the A fragment of keys 16kk..16kk+15.
      uint32_t p_frag[kMFrags][4];
#pragma unroll
      for (int mi = 0; mi < kMFrags; ++mi) {
        p_frag[mi][0] = pack_pair<DType>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        p_frag[mi][1] = pack_pair<DType>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        p_frag[mi][2] = pack_pair<DType>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        p_frag[mi][3] = pack_pair<DType>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
#pragma unroll
      for (int nd = 0; nd < kNFragsO; nd += 2) {
        // transposed matrices: keys 0-7 | dims 0-7, keys 8-15 | dims 0-7, keys 0-7 | dims 8-15, keys 8-15 | dims 8-15
        // -> b0, b1 of dim fragment nd, then b0, b1 of dim fragment nd + 1 (of this warp's dims)
        uint32_t v_frag[4];
        ldmatrix_x4_trans(
            v_frag,
            v_stage + dim0() + KVTile::offset(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, nd * 8 + (lane / 16) * 8));
#pragma unroll
        for (int mi = 0; mi < kMFrags; ++mi) {
          mma_m16n8k16_f32<DType>(o[mi][nd], p_frag[mi], v_frag[0], v_frag[1]);
          mma_m16n8k16_f32<DType>(o[mi][nd + 1], p_frag[mi], v_frag[2], v_frag[3]);
        }
      }
    }
  }

  /// This work item's first query row in q, whose elements are Elem (DType, or fp8 codes).
  template <typename Elem>
  __device__ __forceinline__ const Elem* q_rows() const {
    return static_cast<const Elem*>(p.q) + w.seq * p.q_strides.batch +
           static_cast<int64_t>(w.q_start + w.q_row0) * p.q_strides.token + w.qo_head * p.q_strides.head;
  }

  /// The Q tile: copied (cp.async, riding with K_0's group), or, fp8 q, converted on the way.
  __device__ __forceinline__ void load_q(const DType* q_gmem, int rows_valid) const {
    if constexpr (kFp8KV) {
      if (p.q_format != ElementFormat::kCompute) {
        load_code_tile_converted<QTile, kThreads>(q_smem, q_rows<uint8_t>(), p.q_strides.token, rows_valid,
                                                  p.head_dim_qk / 16, p.q_format);
        return;
      }
    }
    load_tile_or_zero<QTile, kThreads>(q_smem, q_gmem, p.q_strides.token, rows_valid, q_chunks_valid());
  }

  __device__ __forceinline__ static void scale_scores(float (&s)[kMFrags][kNFragsS][4], float factor) {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nb = 0; nb < kNFragsS; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][nb][e] *= factor;
  }

  __device__ __forceinline__ static void scale_output(float (&o)[kMFrags][kNFragsO][4], float factor) {
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nd = 0; nd < kNFragsO; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mi][nd][e] *= factor;
  }

  __device__ __forceinline__ void run() {
    const int rows_valid = w.query_rows<kBlockM>();
    const DType* q_gmem = q_rows<DType>();

    // The tiles the whole CTA needs.
    const VisibleKeys visibility = w.visible_keys<kChunked>(p);
    const KvTileRange tiles = KvTileRange::of<kBlockN>(visibility, w.q_row0, rows_valid);
    const int tile_begin = tiles.begin, tile_end = tiles.begin + tiles.count, num_tiles = tiles.count;

    // Pipeline. Commit groups are issued in the order K_0, V_0, K_1, V_1, ...; the
    // prologue issues K_0..K_{S-1} and V_0..V_{S-2} (Q rides with K_0), each
    // iteration one V and one K, and empty groups past the last tile keep the
    // count uniform. Before each wait 2S - 1 groups are pending, so waiting
    // until 2S - 2 remain completes exactly the oldest: K_j, then V_j.
    //
    // K_t and V_t are always issued one right after the other (K_t, V_t, K_t+1, ...).
    // In a paged cache both use the page id of tile t (per warp), which is looked up
    // when K_t-1 is issued: a dependent block-table load would otherwise stall the copies.
    int32_t page_next = kPaged ? row_page_id(tile_begin, tile_end) : 0, page_now = 0;
    auto issue_k = [&](int tile, int stage) {
      if constexpr (kPaged) {
        page_now = page_next;
        page_next = row_page_id(tile + 1, tile_end);
      }
      load_kv(k_ring, k_gmem, p.k_strides, tile, stage, page_now, qk_chunks_valid());
    };
    auto issue_v = [&](int tile, int stage) {
      load_kv(v_ring, v_gmem, p.v_strides, tile, stage, page_now, v_chunks_valid());
    };

    load_q(q_gmem, rows_valid);
#pragma unroll
    for (int stage = 0; stage < kStages; ++stage) {
      if (stage < num_tiles) issue_k(tile_begin + stage, stage);
      cp_async_commit();
      if (stage + 1 < kStages) {
        if (stage < num_tiles) issue_v(tile_begin + stage, stage);
        cp_async_commit();
      }
    }

    float o[kMFrags][kNFragsO][4];
#pragma unroll
    for (int mi = 0; mi < kMFrags; ++mi)
#pragma unroll
      for (int nd = 0; nd < kNFragsO; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mi][nd][e] = 0.f;
    OnlineSoftmax<kMFrags> softmax;
    softmax.init();

    // One K/V tile: S = Q K_j^T, softmax, O += P V_j, with the next loads issued as
    // soon as a stage frees up. kMask: which ends of the visible keys its scores are tested against.
    auto process_tile = [&](int j, auto mask) {
      constexpr TileMask kMask = decltype(mask)::value;
      const int stage = j % kStages;
      cp_async_wait<2 * kStages - 2>();
      if constexpr (kFp8KV) convert_own_chunks(k_ring, 0, stage);
      __syncthreads();                      // K_j has landed for all threads; all warps are done with V_{j-1}
      const int v_ahead = j + kStages - 1;  // V_{j+S-1} reuses V_{j-1}'s stage
      if (v_ahead < num_tiles) issue_v(tile_begin + v_ahead, v_ahead % kStages);
      cp_async_commit();

      float s[kMFrags][kNFragsS][4];
      // (The ring's stage is written out here, not behind a helper: through one, ptxas allocated the
      // bf16 kernel's registers differently and spilled 8 more bytes at d128.)
      if constexpr (kFp8KV) {
        compute_scores(operand_tile(0), s);
      } else {
        compute_scores(k_ring + stage * KVTile::kElems, s);
      }
      if constexpr (kFp8KV) scale_scores(s, qk_descale());
      scores_to_logits<kSoftCap, kMask>(s, p, visibility, w.q_row0 + warp_row0, (tile_begin + j) * kBlockN, lane);
      softmax.update(s, o, p.logit_to_log2);

      cp_async_wait<2 * kStages - 2>();
      if constexpr (kFp8KV) convert_own_chunks(v_ring, 1, stage);
      __syncthreads();                  // V_j has landed for all threads; all warps are done with K_j
      const int k_ahead = j + kStages;  // K_{j+S} reuses K_j's stage
      if (k_ahead < num_tiles) issue_k(tile_begin + k_ahead, stage);
      cp_async_commit();

      if constexpr (kFp8KV) {
        accumulate_pv(operand_tile(1), s, o);
      } else {
        accumulate_pv(v_ring + stage * KVTile::kElems, s, o);
      }
    };
    // The unmasked tiles form one run in the middle; separate loops keep the mask's
    // compares out of that run entirely. The run's ends are computed again here rather
    // than kept from the call above: kept through the pipeline prologue, they made
    // ptxas spill 12 bytes at d128.
    const KvTileRange run = KvTileRange::of<kBlockN>(visibility, w.q_row0, rows_valid);
    int j = 0;
    for (; j < run.full_begin; ++j) process_tile(j, MaskBoth{});
    for (; j < run.full_end; ++j) process_tile(j, MaskNone{});
    for (; j < num_tiles; ++j) process_tile(j, MaskBoth{});  // (MaskEnd here made ptxas spill 8-28 bytes at d128)

    cp_async_wait<0>();  // nothing may still write the Q tile that store() reuses
    __syncthreads();
    float lse[2 * kMFrags];
    softmax.finalize(o, p.logit_to_log2, lse);
    if (p.sinks != nullptr) OnlineSoftmax<kMFrags>::add_sink(o, lse, __ldg(p.sinks + w.qo_head));
    if constexpr (kFp8KV) scale_output(o, descale_of(p.v_descale, w.qo_head / p.group_size));
    // Split dims: each warp stages its own columns of its rows; one warp of the block writes lse.
    store_warp_rows<ColumnSlice<QTile, kSplitDim>>(p, w, q_smem + dim0(), warp_row0, lane,
                                                   out_chunks_valid() - dim0() / QTile::kElemsPerChunk, o, lse, dim0(),
                                                   split() == 0);
  }
};

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    prefill_kernel(const __grid_constant__ PrefillParams params) {
  using DType = typename Traits::DType;
  using KVElem = typename Traits::KVElem;
  extern __shared__ __align__(16) uint8_t smem[];
  WorkItem work;
  if (!find_work_item<Traits::kBlockM>(params, static_cast<int>(blockIdx.x), work)) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int kv_head = work.qo_head / params.group_size;
  // Paged caches address keys through the page table; contiguous ones from the sequence's first row.
  const int64_t k_offset = kPaged ? 0 : work.seq * params.k_strides.batch + work.kv_start * params.k_strides.token;
  const int64_t v_offset = kPaged ? 0 : work.seq * params.v_strides.batch + work.kv_start * params.v_strides.token;
  // [Q][K ring][V ring]; fp8 K/V: [Q][K operand][V operand][K code ring][V code ring]; then, split
  // dims only, the score exchange.
  DType* q_smem = reinterpret_cast<DType*>(smem);
  DType* after_q = q_smem + Traits::QTile::kElems;
  KVElem* k_ring = reinterpret_cast<KVElem*>(after_q + (Traits::kFp8KV ? 2 * Traits::KVTile::kElems : 0));
  KVElem* v_ring = k_ring + Traits::kStages * Traits::KVStageTile::kElems;
  PrefillCta<Traits, kSoftCap, kPaged, kChunked>{
      params,
      work,
      q_smem,
      k_ring,
      v_ring,
      static_cast<const KVElem*>(params.k) + k_offset + kv_head * params.k_strides.head,
      static_cast<const KVElem*>(params.v) + v_offset + kv_head * params.v_strides.head,
      kPaged ? work.block_table_row(params) : nullptr,
      reinterpret_cast<float*>(smem + Traits::kTileBytes),
      lane,
      (Traits::kDimSplits == 1 ? static_cast<int>(threadIdx.x) / 32
                               : static_cast<int>(threadIdx.x) / 32 % Traits::kRowWarps) *
          Traits::kMFrags * 16}
      .run();
}

}  // namespace torch_attn
