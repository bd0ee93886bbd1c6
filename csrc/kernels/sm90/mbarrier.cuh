// mbarriers (sm_90): the producer / consumer hand-over of shared-memory stages, and the
// generic-to-async proxy fence that orders ordinary stores before the async proxy reads.
#pragma once
#include <cstdint>
#include "kernels/common/smem_address.cuh"

namespace torch_attn {

/// An mbarrier in shared memory: a phase completes when `count` arrivals have come;
/// waiters name the phase by its parity (0, 1, 0, ...).
struct MBarrier {
  uint64_t word;

  __device__ __forceinline__ void init(uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(&word)), "r"(count) : "memory");
  }
  /// Arrive with release semantics: this thread's earlier writes are visible to
  /// threads that then see the phase complete.
  __device__ __forceinline__ void arrive() {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(&word)) : "memory");
  }
  /// Blocks until the phase with this parity has completed. Waiting for parity 1 on
  /// a fresh barrier returns at once (the phase before phase 0 counts as complete),
  /// which lets a producer's first pass over empty buffers go through.
  __device__ __forceinline__ void wait(uint32_t parity) {
    uint32_t done = 0;
    do {
      asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(done)
                   : "r"(smem_address(&word)), "r"(parity)
                   : "memory");
    } while (!done);
  }
};

/// Makes this thread's completed generic-proxy writes to shared memory (st.shared,
/// cp.async) visible to the async proxy, which wgmma reads operands through.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/// mbarrier.arrive.expect_tx: arrive, and expect `bytes` more from the copy engine.
__device__ __forceinline__ void arrive_expecting_bytes(MBarrier& bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(&bar.word)), "r"(bytes)
               : "memory");
}

}  // namespace torch_attn
