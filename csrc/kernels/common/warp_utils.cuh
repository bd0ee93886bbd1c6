// Warp-level helpers: a warp-uniform value rebuilt from votes, and a busy-wait.
#pragma once
#include <cstdint>

namespace torch_attn {

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

}  // namespace torch_attn
