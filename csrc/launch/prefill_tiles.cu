// Tile facts the host needs (grid size, shared-memory check), read from the traits.
#include <cuda_bf16.h>
#include "launch/prefill_launch.h"

namespace torch_attn {

#define TORCH_ATTN_TILE_CASE(W, EXPR) \
  case W:                             \
    return EXPR;

int prefill_block_m(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillTraits<__nv_bfloat16, W>::kBlockM))
    TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

int prefill_sm90_block_m(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillSm90Traits<__nv_bfloat16, W>::kBlockM))
    TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

int prefill_sm90_block_n(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillSm90Traits<__nv_bfloat16, W>::kBlockN))
    TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

size_t prefill_sm90_smem_bytes(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillSm90Traits<__nv_bfloat16, W>::kSmemBytes))
    TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

size_t prefill_smem_bytes(int head_dim_tile) {
  switch (head_dim_tile) {
#define X(W) TORCH_ATTN_TILE_CASE(W, (PrefillTraits<__nv_bfloat16, W>::kSmemBytes))
    TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(X)
#undef X
  }
  return 0;
}

}  // namespace torch_attn
