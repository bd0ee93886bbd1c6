// Shared-memory layout of a [kRows][kHeadDim] tile of 16-bit elements.
//
// Rows are padded from kHeadDim to kHeadDim + 8 elements (one 16-byte chunk).
// Why: ldmatrix (and the 16-byte cp.async stores) touch 8 rows x 16 bytes per
// phase, and shared memory serves 16 bytes from each of 8 bank groups (4 banks of
// 4 bytes) per cycle. With a row pitch of P chunks, chunk c of row r sits in bank
// group (r * P + c) mod 8; for odd P the 8 rows r..r+7 land in 8 different groups,
// so every phase is conflict-free. Every tile width is a multiple of 16 elements,
// so kHeadDim / 8 is even and P = kHeadDim / 8 + 1 is odd. Unlike an XOR swizzle,
// the pad works for widths that are not a multiple of 64 (96, 192) unchanged.
#pragma once

namespace torch_attn {

template <int kRows_, int kHeadDim_>
struct SmemTile {
  static constexpr int kRows = kRows_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kElemsPerChunk = 8;
  static constexpr int kChunksPerRow = kHeadDim / kElemsPerChunk;  // 16-byte chunks of data
  static constexpr int kPitch = kHeadDim + 8;                      // elements between rows
  static constexpr int kElems = kRows * kPitch;
  static_assert(kHeadDim % 16 == 0, "a tile row is a whole number of 16x16 MMA k-steps");
  static_assert((kPitch / 8) % 2 == 1, "an odd pitch in 16-byte chunks keeps ldmatrix conflict-free");

  /// Offset in elements of (row, col).
  static __device__ __forceinline__ int offset(int row, int col) { return row * kPitch + col; }
};

/// Columns [c, c + kWidth) of a Tile, addressed from a pointer to its column c: the Tile's pitch
/// and bank pattern, with kWidth columns as far as a user of the tile can see.
template <class Tile, int kWidth>
struct ColumnSlice {
  static constexpr int kRows = Tile::kRows;
  static constexpr int kHeadDim = kWidth;
  static constexpr int kElemsPerChunk = Tile::kElemsPerChunk;
  static constexpr int kChunksPerRow = kWidth / kElemsPerChunk;
  static_assert(kWidth <= Tile::kHeadDim && kWidth % kElemsPerChunk == 0, "whole chunks of the tile's columns");

  static __device__ __forceinline__ int offset(int row, int col) { return Tile::offset(row, col); }
};

/// A [kRows][kHeadDim] tile of fp8 codes (bytes), rows unpadded: the cp.async ring of fp8 K/V.
/// Only the thread that copied a 16-byte chunk reads it back (to convert it), with the copy's own
/// thread mapping, so its accesses are the copies' conflict-free rows.
template <int kRows_, int kHeadDim_>
struct CodeTile {
  static constexpr int kRows = kRows_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kElemsPerChunk = 16;
  static constexpr int kChunksPerRow = kHeadDim / kElemsPerChunk;
  static constexpr int kElems = kRows * kHeadDim;
  static_assert(kHeadDim % kElemsPerChunk == 0, "whole 16-byte chunks per row");

  static __device__ __forceinline__ int offset(int row, int col) { return row * kHeadDim + col; }
};

}  // namespace torch_attn
