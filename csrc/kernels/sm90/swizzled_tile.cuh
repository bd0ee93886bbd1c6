// Shared-memory layout of a [kRows][kHeadDim] tile for wgmma: 128-byte swizzle.
//
// The tile is stored as kHeadDim / 64 column blocks of [kRows][64] elements (rows
// of 128 bytes), each block 1024-byte aligned. Within a block, 16-byte chunk c of
// row r sits at chunk position c ^ (r % 8): the layout wgmma's descriptors call
// "128-byte swizzle" (mode 1), and the one it reads without bank conflicts. The
// same XOR keeps the copies in (16-byte cp.async stores, 8 rows of one chunk
// column per phase) and the epilogue's 4-byte stores conflict-free.
#pragma once

namespace torch_attn {

template <int kRows_, int kHeadDim_>
struct SwizzledTile {
  static constexpr int kRows = kRows_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kChunksPerRow = kHeadDim / 8;
  static constexpr int kBlockCols = 64;                   // 128 bytes of 16-bit elements
  static constexpr int kBlockElems = kRows * kBlockCols;  // one column block
  static constexpr int kBlockBytes = kBlockElems * 2;
  static constexpr int kElems = kRows * kHeadDim;
  static_assert(kHeadDim % kBlockCols == 0, "whole 64-column blocks");
  static_assert(kRows % 8 == 0, "whole 8-row swizzle atoms (1024 bytes)");

  /// Offset in elements of (row, col). Unsigned: rows and columns are never negative,
  /// and the divisions and remainders stay shifts and masks (signed ones cost sign
  /// fix-ups: ~200 instructions per warp in the epilogue's stores alone).
  static __device__ __forceinline__ unsigned offset(unsigned row, unsigned col) {
    return (col / kBlockCols) * kBlockElems + row * kBlockCols + ((((col / 8) % 8) ^ (row % 8)) * 8) + col % 8;
  }
};

}  // namespace torch_attn
