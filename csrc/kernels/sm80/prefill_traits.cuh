// The compiled configurations of the prefill kernel: one tile table, one traits struct.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include "kernels/sm80/smem_tile.cuh"

namespace torch_attn {

// Head-dim widths the kernel is compiled for; a head dim D (a multiple of 8) runs
// on the smallest width >= D, with the columns past D zero-filled.
#define TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(X) X(64) X(96) X(128) X(192) X(256) X(512)

/// The tile table. Each warp owns whole rows of the query tile, so softmax row
/// statistics never leave a warp (quad shuffles only). Per thread the O accumulator
/// holds BM / warps * width / 32 floats and the score tile BM / warps * BN / 32;
/// both must fit next to addresses and fragments in 255 registers.
/// kDimSplits > 1: O of a full-width row no longer fits one warp, so kDimSplits warps share each
/// row block, each owning 1 / kDimSplits of the head dims: of V's columns for O += P V, and of q . k's
/// terms for S, whose partial sums the warps exchange through shared memory (no score is computed twice).
// kMinBlocks is the CTAs per SM the register budget is cut for (__launch_bounds__):
// 2 x 128 threads leave 255 registers a thread, 2 x 256 threads 128.
template <int kHeadDimTile>
struct TileShape;
// 64: O is small (64 floats); BN = 128 would halve the loop trips but its 128-float S spills; 55 KB.
template <>
struct TileShape<64> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kStages = 2, kMinBlocks = 2, kDimSplits = 1;
};
// 96: BN = 32: with BN = 64 (one or two stages) ptxas spills a few registers; 53 KB.
template <>
struct TileShape<96> {
  static constexpr int kBlockM = 128, kBlockN = 32, kWarps = 4, kStages = 2, kMinBlocks = 2, kDimSplits = 1;
};
// 128: FlashAttention-2's 128 x 64 with 4 warps of 32 rows (O 128 + S 64 floats);
// 104 KB with two K/V stages: 2 CTAs/SM on H100 (228 KB/SM).
template <>
struct TileShape<128> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 4, kStages = 2, kMinBlocks = 2, kDimSplits = 1;
};
// 192: 8 warps of 16 rows keep O at 96 floats; 154 KB: 1 CTA of 8 warps per SM.
template <>
struct TileShape<192> {
  static constexpr int kBlockM = 128, kBlockN = 64, kWarps = 8, kStages = 2, kMinBlocks = 1, kDimSplits = 1;
};
// 256: 4 warps of 16 rows (O 128 floats) and one K/V stage (V_j loads under Q K_j^T,
// K_j+1 under P V_j): 101 KB, so 2 CTAs/SM on H100 hide each other's barriers
// (one 8-warp CTA of 128 rows ran alone per SM and was slower); fits an A100 too.
template <>
struct TileShape<256> {
  static constexpr int kBlockM = 64, kBlockN = 64, kWarps = 4, kStages = 1, kMinBlocks = 2, kDimSplits = 1;
};
// 512: as 256, with each row block's dims split over two warps (O 128 floats each) and 32-key tiles:
// 146 KB with the score exchange, which fits an A100 (one CTA of 8 warps per SM).
template <>
struct TileShape<512> {
  static constexpr int kBlockM = 64, kBlockN = 32, kWarps = 8, kStages = 1, kMinBlocks = 1, kDimSplits = 2;
};

/// kFp8KV: K and V arrive as fp8 codes (ElementFormat in the parameters): the kStages-deep cp.async
/// ring holds the codes (half the bytes), and each thread converts the chunks it copied into one
/// compute-dtype tile of K and one of V, which the MMAs read as they read a bf16 stage.
template <typename DType_, int kHeadDimTile, bool kFp8KV_ = false>
struct PrefillTraits {
  using DType = DType_;
  static constexpr bool kFp8KV = kFp8KV_;
  using Shape = TileShape<kHeadDimTile>;
  static constexpr int kHeadDim = kHeadDimTile;
  static constexpr int kBlockM = Shape::kBlockM;  // query rows per CTA
  static constexpr int kBlockN = Shape::kBlockN;  // keys per K/V tile
  static constexpr int kWarps = Shape::kWarps;
  static constexpr int kStages = Shape::kStages;  // K/V tiles in flight
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kDimSplits = Shape::kDimSplits;     // warps per row block
  static constexpr int kRowWarps = kWarps / kDimSplits;    // row blocks
  static constexpr int kSplitDim = kHeadDim / kDimSplits;  // head dims per warp

  static constexpr int kMFrags = kBlockM / (16 * kRowWarps);  // m16 query fragments per warp
  static constexpr int kNFragsS = kBlockN / 8;                // n8 key fragments of S
  static constexpr int kNFragsO = kSplitDim / 8;              // n8 head-dim fragments of O

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;                                           // what the MMAs read
  using KVStageTile = std::conditional_t<kFp8KV, CodeTile<kBlockN, kHeadDim>, KVTile>;  // what cp.async fills
  using KVElem = std::conditional_t<kFp8KV, uint8_t, DType>;
  static constexpr int kOperandStages = kFp8KV ? 1 : kStages;  // compute-dtype K (and V) tiles
  static constexpr size_t kTileBytes = (QTile::kElems + 2 * kOperandStages * KVTile::kElems) * sizeof(DType) +
                                       (kFp8KV ? 2 * kStages * KVStageTile::kElems : 0);
  // Split dims: each warp's partial scores, [warp][score][lane] floats, after the tiles.
  static constexpr int kScoresPerThread = kMFrags * kNFragsS * 4;
  static constexpr size_t kExchangeBytes = kDimSplits > 1 ? size_t{kWarps} * kScoresPerThread * 32 * sizeof(float) : 0;
  static constexpr size_t kSmemBytes = kTileBytes + kExchangeBytes;
  static constexpr int kMinBlocksPerSm = Shape::kMinBlocks;

  static_assert(kWarps % kDimSplits == 0 && kBlockM % (16 * kRowWarps) == 0, "each warp owns whole m16 fragments");
  static_assert(kSplitDim % 16 == 0, "each warp's dims are whole 16-dim MMA k-steps");
  static_assert(kTileBytes % 16 == 0, "the score exchange starts 16-byte aligned");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0, "ldmatrix_x4 covers 16 keys x 16 dims");
  static_assert(kStages >= 1, "at least one K/V stage");
};

}  // namespace torch_attn
