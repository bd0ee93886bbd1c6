// The compiled configurations of the Hopper (sm_90a) prefill kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include "swizzled_tile.cuh"

namespace torch_attn {

// Head-dim widths of the wgmma kernel; a head dim D runs on the smallest width >= D
// (columns past D zero-filled), as on the mma.sync path.
#define TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X) X(64) X(128) X(256)

/// One CTA: a producer warpgroup (one warp drives the copy engine) and two consumer
/// warpgroups of 64 query rows each (BM = 128). Per consumer thread, registers hold O
/// (width / 2 floats), S (BN / 2) and the bf16 weights P (BN / 4), which bounds BN:
/// with 232-240 registers, BN = 128 up to width 128 and 64 at width 256.
template <int kHeadDimTile>
struct Sm90TileShape;
// kQStages: Q tiles, so that the next work item's Q loads while this one finishes
// (its out leaves through its own Q tile).
// 64: 96 KB of shared memory (two Q tiles of 16 KB, two K/V stages of 16 KB each).
template <> struct Sm90TileShape<64>  { static constexpr int kBlockN = 128, kStages = 2, kQStages = 2; };
// 128: 192 KB (two Q tiles of 32 KB, two K/V stages of 32 KB each): one CTA per SM.
// O + S + P = 160 registers.
template <> struct Sm90TileShape<128> { static constexpr int kBlockN = 128, kStages = 2, kQStages = 2; };
// 256: O alone takes 128 registers: BN = 64; 192 KB with one Q tile (a second does not fit).
template <> struct Sm90TileShape<256> { static constexpr int kBlockN = 64, kStages = 2, kQStages = 1; };

template <typename DType_, int kHeadDimTile>
struct PrefillSm90Traits {
  using DType = DType_;
  using Shape = Sm90TileShape<kHeadDimTile>;
  static constexpr int kHeadDim = kHeadDimTile;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = Shape::kBlockN;
  static constexpr int kStages = Shape::kStages;
  static constexpr int kQStages = Shape::kQStages;
  static constexpr int kConsumerGroups = 2;
  static constexpr int kRowsPerGroup = kBlockM / kConsumerGroups;  // wgmma's M = 64
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static constexpr int kConsumerWarps = 4 * kConsumerGroups;
  // setmaxnreg splits the 384 x 168 registers the CTA starts with: the producer only
  // drives the copy engine (and looks up pages: 32 registers instead of 24); the
  // consumers hold O, S and P. 128 x 24 + 256 x 240 = 384 x 168.
  static constexpr int producer_regs(bool paged) { return paged ? 32 : 24; }
  static constexpr int consumer_regs(bool paged) { return paged ? 232 : 240; }

  static constexpr int kNFragsS = kBlockN / 8;  // n8 key fragments of S per warp
  static constexpr int kNFragsO = kHeadDim / 8;
  static constexpr int kPFrags = kBlockN / 16;  // k16 steps of O += P V

  using QTile = SwizzledTile<kBlockM, kHeadDim>;
  using KVTile = SwizzledTile<kBlockN, kHeadDim>;
  static constexpr size_t kTileBytes = (kQStages * QTile::kElems + 2 * kStages * KVTile::kElems) * sizeof(DType);
  // 1024 bytes of slack: the swizzle atoms need 1024-byte-aligned tiles, and the
  // dynamic shared-memory base is only guaranteed 16-byte aligned.
  // The mbarriers after the tiles: Q full and empty, full / empty for the K and V of
  // each stage, and the producer's own for V tiles past kv_len.
  static constexpr size_t kBarrierBytes = sizeof(uint64_t) * (2 * kQStages + 4 * kStages + 1);
  static constexpr size_t kSmemBytes = 1024 + kTileBytes + kBarrierBytes;

  static_assert(kRowsPerGroup == 64, "one wgmma M = 64 per consumer warpgroup");
  static_assert(128 * producer_regs(true) + 256 * consumer_regs(true) <= 168 * kThreads &&
                    128 * producer_regs(false) + 256 * consumer_regs(false) <= 168 * kThreads,
                "register split");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N for S");
};

}  // namespace torch_attn
