// Synchronisation between producer and consumer warpgroups (sm_90): mbarriers,
// the generic-to-async proxy fence, named barriers, and register reallocation.
#pragma once
#include <cstdint>

namespace torch_attn {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

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
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
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

/// bar.sync on named barrier `id` (1..15; 0 is __syncthreads) for `threads` threads.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/// bar.red.and on named barrier `id` for `threads` threads: whether `value` holds in
/// all of them (each waits for the others, as at bar.sync).
__device__ __forceinline__ bool named_barrier_all(int id, int threads, bool value) {
  uint32_t all;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbar.red.and.pred q, %2, %3, p;\nselp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(all)
      : "r"(static_cast<uint32_t>(value)), "r"(id), "r"(threads)
      : "memory");
  return all != 0;
}

/// v (0 <= v < 4, the same in every lane) rebuilt from two votes. The compiler cannot
/// tell that a value derived from threadIdx is the same across the warp and keeps what
/// is computed from it in vector registers; derived from votes, it can use uniform ones.
__device__ __forceinline__ int warp_uniform_2bit(int v) {
  return static_cast<int>((__ballot_sync(0xffffffffu, v & 1) & 1u) | ((__ballot_sync(0xffffffffu, v & 2) & 1u) << 1));
}

/// Busy-waits about `cycles` SM clock cycles (one PTX loop: the compiler keeps nothing
/// of it live around it).
__device__ __forceinline__ void spin_for_cycles(uint32_t cycles) {
  asm volatile(
      "{\n.reg .u32 start, now;\n.reg .pred more;\nmov.u32 start, %%clock;\n"
      "spin_for_cycles_loop:\nmov.u32 now, %%clock;\nsub.u32 now, now, start;\n"
      "setp.lt.u32 more, now, %0;\n@more bra spin_for_cycles_loop;\n}\n" ::"r"(cycles));
}

/// setmaxnreg (sm_90a): a warpgroup gives up or claims registers. The kernel needs a
/// register cap at entry (__launch_bounds__(threads, 1)), and each role must sit in
/// its own branch of one if/else.
template <int kRegs>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace torch_attn
