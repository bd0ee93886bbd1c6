// The compiled configurations of the Hopper (sm_90a) prefill kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include "kernels/sm90/swizzled_tile.cuh"

namespace torch_attn {

// Head-dim tiles of the wgmma kernel as (q/k width, v width); a call runs on the narrowest
// tile that holds both its head dims (columns past them zero-filled), as on the mma.sync path.
// (192, 128): MLA prefill (DeepSeek-V3, Kimi-K2, GLM), whose P V is then 128 wide, not 192.
#define TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X) X(64, 64) X(128, 128) X(192, 128) X(192, 192) X(256, 256)

/// One CTA: a producer warpgroup (two warps drive the copy engine) and kConsumerGroups
/// consumer warpgroups of 64 query rows each (BM = 64 x groups). Per consumer thread,
/// registers hold O (width / 2 floats), S (BN / 2) and the bf16 weights P (BN / 4),
/// which bounds BN: with 232 registers (two consumer groups), BN = 128 up to width 128
/// and 64 at width 256.
template <int kHeadDimTile>
struct Sm90TileShape;
// kQStages: Q tiles, so that the next work item's Q loads while this one finishes
// (its out leaves through its own Q tile).
// kPvWaitInNextStep: where a consumer waits for P_{j-1} V_{j-1} (sm90/consumer.cuh,
// consume): at the end of step j, or at the start of step j + 1. Measured (H100, A/B):
// the next step is 4-5% faster at width 256 and 2-4% slower at width 128; at 64 it
// is even, and the end of the step keeps the soft-cap kernels' spills smaller.
// kWeightsAtCurrentMax: the softmax of tiles after the first takes its weights at the
// rows' current max, without the tile's max (sm90/consumer.cuh, consume:
// weights_after_first). Measured (H100, ncu at base clocks, A/B): d128 non-causal 16k
// +10.3%, S=4096 +8.3%, causal S=4096 +7.4%, ragged GQA +5.0%, d64 +3.2 to +3.6%; at
// width 256 (BN = 64: twice the tiles, each with its warpgroup vote) -2.7% and -11%
// (causal S=1024, in a build with it on at every width), so not there.
// 64: three consumer groups (BM = 192). The PV product of a 64-wide tile is half that
// of width 128 while the softmax work per score is the same: with two groups the tensor
// cores idle while both run their softmax; a third keeps them fed (as FlashAttention-3
// does at d64). O + S + P = 128 of the 160 registers a consumer gets when four
// warpgroups share the register file. 112 KB of shared memory (two Q tiles of 24 KB,
// two K/V stages of 16 KB each).
template <>
struct Sm90TileShape<64> {
  static constexpr int kBlockN = 128, kStages = 2, kQStages = 2, kConsumerGroups = 3;
  static constexpr bool kPvWaitInNextStep = false, kWeightsAtCurrentMax = true;
};
// 128: 192 KB (two Q tiles of 32 KB, two K/V stages of 32 KB each): one CTA per SM.
// O + S + P = 160 registers.
template <>
struct Sm90TileShape<128> {
  static constexpr int kBlockN = 128, kStages = 2, kQStages = 2, kConsumerGroups = 2;
  static constexpr bool kPvWaitInNextStep = false, kWeightsAtCurrentMax = true;
};
// 192 (MLA's D_qk, with D_v <= 192): BN = 64 as at 256, which makes two Q tiles fit: 192 KB (two Q tiles of
// 48 KB, two K/V stages of 48 KB each). O + S + P = 144 registers.
template <>
struct Sm90TileShape<192> {
  static constexpr int kBlockN = 64, kStages = 2, kQStages = 2, kConsumerGroups = 2;
  static constexpr bool kPvWaitInNextStep = true, kWeightsAtCurrentMax = false;
};
// 256: O alone takes 128 registers: BN = 64; 192 KB with one Q tile (a second does not
// fit) and 32 KB to stage out (see OutStageTile below).
template <>
struct Sm90TileShape<256> {
  static constexpr int kBlockN = 64, kStages = 2, kQStages = 1, kConsumerGroups = 2;
  static constexpr bool kPvWaitInNextStep = true, kWeightsAtCurrentMax = false;
};

template <typename DType_, int kHeadDimTile, int kHeadDimVTile = kHeadDimTile>
struct PrefillSm90Traits {
  using DType = DType_;
  using Shape = Sm90TileShape<kHeadDimTile>;       // (a narrower V only frees shared memory and registers)
  static constexpr int kHeadDim = kHeadDimTile;    // of Q and K
  static constexpr int kHeadDimV = kHeadDimVTile;  // of V and O
  static constexpr int kConsumerGroups = Shape::kConsumerGroups;
  static constexpr int kRowsPerGroup = 64;  // wgmma's M
  static constexpr int kBlockM = kRowsPerGroup * kConsumerGroups;
  static constexpr int kBlockN = Shape::kBlockN;
  static constexpr int kStages = Shape::kStages;
  static constexpr int kQStages = Shape::kQStages;
  static constexpr bool kPvWaitInNextStep = Shape::kPvWaitInNextStep;
  static constexpr bool kWeightsAtCurrentMax = Shape::kWeightsAtCurrentMax;
  // Whether each consumer group runs only the K/V tiles its own rows see
  // (Sm90Item::group_skips): where a query tile is taller than a K/V tile, the
  // diagonal of a square causal mask always leaves a tile that the first group's rows
  // do not reach (d64 causal S=1024 +4.6%, d256 causal S=1024 +8.8%; H100, ncu at base
  // clocks). At d128 (BM = BN) that happens only with unaligned lengths or a window,
  // and the bookkeeping on the way to each item's first tile cost 3% on short causal
  // items (S=512), for +0.6% on a ragged GQA batch.
  static constexpr bool kGroupTileRanges = kBlockM > kBlockN;
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static constexpr int kConsumerWarps = 4 * kConsumerGroups;
  // setmaxnreg splits the registers the CTA starts with (__launch_bounds__(kThreads, 1):
  // 168 a thread for 384 threads, 128 for 512): the producer drives the copy engine,
  // looks up pages and claims work items (40 registers; three consumer groups leave it
  // 32, and it spills a few values on rare paths); the consumers take the rest, in
  // multiples of 8 (two groups: 232; three groups: 160).
  static constexpr int kEntryRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegs = kConsumerGroups == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = (kEntryRegs * kThreads - 128 * kProducerRegs) / (128 * kConsumerGroups) / 8 * 8;

  static constexpr int kNFragsS = kBlockN / 8;  // n8 key fragments of S per warp
  static constexpr int kNFragsO = kHeadDimV / 8;
  static constexpr int kPFrags = kBlockN / 16;  // k16 steps of O += P V

  using QTile = SwizzledTile<kBlockM, kHeadDim>;
  using KTile = SwizzledTile<kBlockN, kHeadDim>;
  using VTile = SwizzledTile<kBlockN, kHeadDimV>;
  // Where out is staged for its 16-byte stores (epilogue.cuh). With two Q tiles, through
  // the item's own Q tile: the next item's Q loads into the other. With one, through a
  // tile of its own, 128 columns at a time, so that the Q tile goes back to the producer
  // as soon as the item's last S = Q K^T is done and the next Q loads under the last
  // softmax, P V and the epilogue (through the Q tile, the next Q waited for all three:
  // its own tile made d256 S=1024 2.4% faster, causal 5.6%, S=4096 0.6%; H100, ncu at base clocks).
  static constexpr bool kOutThroughQ = kQStages > 1;
  // (Through Q: out's kHeadDimV columns in the Q tile's memory, the QTile itself where the widths agree.)
  using OutStageTile = SwizzledTile<kBlockM, (kOutThroughQ || kHeadDimV < 128 ? kHeadDimV : 128)>;
  static constexpr int kOutStageElems = kOutThroughQ ? 0 : OutStageTile::kElems;
  static_assert(!kOutThroughQ || kHeadDimV <= kHeadDim, "out is staged in the Q tile");
  static constexpr size_t kTileBytes =
      (kQStages * QTile::kElems + kStages * (KTile::kElems + VTile::kElems) + kOutStageElems) * sizeof(DType);
  // 1024 bytes of slack: the swizzle atoms need 1024-byte-aligned tiles, and the
  // dynamic shared-memory base is only guaranteed 16-byte aligned.
  // The mbarriers after the tiles: Q full and empty, full / empty for the K and V of
  // each stage, the producer's own for V tiles past kv_len, written / read for each
  // slot of work items. Then the work items the producer hands to the other roles (a
  // WorkItem is 12 ints; 48 bytes reserved).
  static constexpr int kItemSlots = 2;
  static constexpr size_t kBarrierBytes = sizeof(uint64_t) * (2 * kQStages + 4 * kStages + 1 + 2 * kItemSlots);
  static constexpr size_t kItemBytes = 48;
  static constexpr size_t kSmemBytes = 1024 + kTileBytes + kBarrierBytes + kItemBytes * kItemSlots;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory: at most 227 KB per CTA on sm_90");

  static_assert(kConsumerRegs <= 256 && kConsumerRegs >= kHeadDimV / 2 + kBlockN / 2 + kBlockN / 4,
                "register split: O, S and P fit the consumers' registers");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N for S");
};

}  // namespace torch_attn
