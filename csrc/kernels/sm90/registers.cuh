// setmaxnreg (sm_90a): warpgroups hand registers to each other.
#pragma once

namespace torch_attn {

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
