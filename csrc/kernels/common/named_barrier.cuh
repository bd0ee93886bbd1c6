// Named barriers (bar.sync, bar.red) among the warps of some warpgroups, not the CTA.
#pragma once
#include <cstdint>

namespace torch_attn {

/// bar.sync on named barrier `id` (1..15; 0 is __syncthreads) for `threads` threads.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/// bar.red.and on named barrier `id` for `threads` threads: whether `value` holds in
/// all of them (each waits for the others, as at bar.sync).
__device__ __forceinline__ bool named_barrier_all(int id, int threads, bool value) {
  uint32_t all;
  asm volatile("{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbar.red.and.pred q, %2, %3, p;\nselp.u32 %0, 1, 0, q;\n}\n"
               : "=r"(all)
               : "r"(static_cast<uint32_t>(value)), "r"(id), "r"(threads)
               : "memory");
  return all != 0;
}

}  // namespace torch_attn
