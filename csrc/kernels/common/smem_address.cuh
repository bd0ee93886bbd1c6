// The shared-state-space address of a pointer into shared memory (what PTX wants).
#pragma once
#include <cstdint>

namespace torch_attn {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

}  // namespace torch_attn
