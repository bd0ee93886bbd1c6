// The compiled configurations of the Hopper (sm_90a) prefill kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include "swizzled_tile.cuh"

namespace torch_attn {

// Head-dim widths of the wgmma kernel; a head dim D runs on the smallest width >= D
// (columns past D zero-filled), as on the mma.sync path.
#define TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X) X(64) X(128) X(256)

/// One CTA: a producer warpgroup (cp.async copies) and two consumer warpgroups of
/// 64 query rows each (BM = 128). Per consumer thread, registers hold O (width / 2
/// floats), S (BN / 2), and the bf16 weights P of two tiles (BN / 4 each), which
/// bounds BN: with 232 registers, BN = 128 up to width 128 and 64 at width 256.
template <int kHeadDimTile>
struct Sm90TileShape;
// setmaxnreg splits the 384 x 168 registers the CTA starts with (64512) between the
// producer (kProducerRegs) and the consumers: 128 x 40 + 256 x 232 or 128 x 56 + 256 x 224.
// 64: 80 KB of shared memory (Q 16 KB, two K/V stages of 16 KB each).
template <> struct Sm90TileShape<64>  { static constexpr int kBlockN = 128, kStages = 2, kProducerRegs = 40; };
// 128: 160 KB (Q 32 KB, two K/V stages of 32 KB each): one CTA per SM. O + S + P = 160 registers.
template <> struct Sm90TileShape<128> { static constexpr int kBlockN = 128, kStages = 2, kProducerRegs = 40; };
// 256: O alone takes 128 registers: BN = 64; 192 KB.
template <> struct Sm90TileShape<256> { static constexpr int kBlockN = 64, kStages = 2, kProducerRegs = 40; };

template <typename DType_, int kHeadDimTile>
struct PrefillSm90Traits {
  using DType = DType_;
  using Shape = Sm90TileShape<kHeadDimTile>;
  static constexpr int kHeadDim = kHeadDimTile;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = Shape::kBlockN;
  static constexpr int kStages = Shape::kStages;
  static constexpr int kConsumerGroups = 2;
  static constexpr int kRowsPerGroup = kBlockM / kConsumerGroups;  // wgmma's M = 64
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static constexpr int kConsumerWarps = 4 * kConsumerGroups;
  // setmaxnreg: the producer only computes addresses (its row copies run in a rolled
  // loop to need few); the consumers hold O, S and P and get the rest.
  static constexpr int kProducerRegs = Shape::kProducerRegs;
  static constexpr int kConsumerRegs = (168 * kThreads - 128 * kProducerRegs) / (128 * kConsumerGroups) / 8 * 8;

  static constexpr int kNFragsS = kBlockN / 8;  // n8 key fragments of S per warp
  static constexpr int kNFragsO = kHeadDim / 8;
  static constexpr int kPFrags = kBlockN / 16;  // k16 steps of O += P V

  using QTile = SwizzledTile<kBlockM, kHeadDim>;
  using KVTile = SwizzledTile<kBlockN, kHeadDim>;
  static constexpr size_t kTileBytes = (QTile::kElems + 2 * kStages * KVTile::kElems) * sizeof(DType);
  // 1024 bytes of slack: the swizzle atoms need 1024-byte-aligned tiles, and the
  // dynamic shared-memory base is only guaranteed 16-byte aligned.
  // The mbarriers after the tiles: Q full, and full / empty for the K and V of each stage.
  static constexpr size_t kBarrierBytes = sizeof(uint64_t) * (1 + 4 * kStages);
  static constexpr size_t kSmemBytes = 1024 + kTileBytes + kBarrierBytes;

  static_assert(kRowsPerGroup == 64, "one wgmma M = 64 per consumer warpgroup");
  static_assert(kThreads == 384 && 128 * kProducerRegs + 256 * kConsumerRegs <= 168 * kThreads, "register split");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N for S");
};

}  // namespace torch_attn
