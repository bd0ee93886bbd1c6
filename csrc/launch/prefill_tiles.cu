// Tile facts the host needs (grid size, shared-memory check), read from the traits.
#include <cuda_bf16.h>
#include "launch/prefill_launch.h"

namespace torch_attn {

#define TORCH_ATTN_TILE_CASE(W, EXPR) \
  case W:                             \
    return EXPR;
// The wgmma kernel's tiles, keyed by (q/k width, v width).
#define TORCH_ATTN_SM90_TILE_CASE(W, WV, EXPR) \
  if (head_dim_tile == W && head_dim_v_tile == WV) return EXPR;

int prefill_block_m(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillTraits<__nv_bfloat16, W>::kBlockM))
    TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

int prefill_sm90_block_m(int head_dim_tile, int head_dim_v_tile) {
#define X(W, WV) TORCH_ATTN_SM90_TILE_CASE(W, WV, (PrefillSm90Traits<__nv_bfloat16, W, WV>::kBlockM))
  TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  return 0;
}

int prefill_sm90_block_n(int head_dim_tile, int head_dim_v_tile) {
#define X(W, WV) TORCH_ATTN_SM90_TILE_CASE(W, WV, (PrefillSm90Traits<__nv_bfloat16, W, WV>::kBlockN))
  TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  return 0;
}

size_t prefill_sm90_smem_bytes(int head_dim_tile, int head_dim_v_tile) {
#define X(W, WV) TORCH_ATTN_SM90_TILE_CASE(W, WV, (PrefillSm90Traits<__nv_bfloat16, W, WV>::kSmemBytes))
  TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  return 0;
}

size_t prefill_smem_bytes(int head_dim_tile, bool fp8_kv) {
  switch (head_dim_tile) {
#define X(W)                                                                          \
  TORCH_ATTN_TILE_CASE(W, (fp8_kv ? PrefillTraits<__nv_bfloat16, W, true>::kSmemBytes \
                                  : PrefillTraits<__nv_bfloat16, W, false>::kSmemBytes))
    TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

}  // namespace torch_attn
