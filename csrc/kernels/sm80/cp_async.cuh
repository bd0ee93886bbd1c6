// cp.async (sm_80+): asynchronous 16-byte copies from global to shared memory.
#pragma once
#include <cstdint>

namespace torch_attn {

/// cp.async.cg.shared.global [dst], [src], 16, src_bytes
/// With `pred` false, src_bytes is 0: the instruction reads nothing from global
/// memory and writes 16 zero bytes to shared memory. This is how tiles that run
/// past valid data (sequence tails, head-dim padding) are filled with zeros.
/// `gmem_src` must still be a valid address; callers clamp it into the tensor.
__device__ __forceinline__ void cp_async_16_or_zero(void* smem_dst, const void* gmem_src, bool pred) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}

/// cp.async.commit_group: close the group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

/// cp.async.wait_group N: wait until at most N committed groups are still in flight.
/// Only this thread's copies are covered: a __syncthreads must follow before other
/// threads read the data.
template <int kMaxPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kMaxPending) : "memory");
}

}  // namespace torch_attn
