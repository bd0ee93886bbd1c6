// wgmma (sm_90a): warpgroup matrix multiply-accumulate, m64nNk16, fp32 accumulate.
//
// A warpgroup (4 consecutive warps, the first one's index divisible by 4) computes
// D[64 x N] += A[64 x 16] * B[16 x N] asynchronously. B always comes from shared
// memory through a matrix descriptor; A from shared memory (wgmma_ss) or from
// registers (wgmma_rs). Warp w of the group holds rows 16w..16w+15 of D, in the same
// per-warp layout as mma.sync's C fragments (sm80/mma.cuh): float d[N / 8][4], fragment
// [nb][e] at row g + 8 (e / 2), column 8 nb + 2 t + e % 2. A in registers uses the
// A-fragment layout of mma.sync m16n8k16, so S accumulators convert into P in place.
//
// Ordering (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
//   wgmma_fence() before the first wgmma that reads registers written since
//   (accumulators, A fragments); wgmma_commit() closes a group; wgmma_wait<N>()
//   waits until at most N groups are pending. ptxas checks register hazards across
//   the asynchronous window and serialises (with a warning) where it cannot prove them safe.
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>

namespace torch_attn {

/// Shared-memory matrix descriptor for an operand stored in 128-byte-swizzled blocks
/// of 8 rows x 128 bytes (swizzled_tile.cuh). Fields (PTX ISA, "Matrix Descriptor
/// Format"): start address >> 4 (bits 0-13), leading-dimension byte offset >> 4
/// (16-29), stride-dimension byte offset >> 4 (32-45), swizzle mode (62-63; 1 = 128 B).
///   K-major operands (Q and K for S = Q K^T): the stride offset is 1024 B between
///   groups of 8 rows; the leading offset is unused with a 128-byte swizzle.
///   MN-major operands (V for O = P V): leading = bytes between 64-column blocks,
///   stride = 1024 B between groups of 8 rows along K.
__device__ __forceinline__ uint64_t smem_descriptor(const void* smem, uint32_t leading_bytes, uint32_t stride_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
         (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (uint64_t{1} << 62);
}

/// The descriptor of the same operand `bytes` further on (bytes a multiple of 16):
/// only the start-address field changes, and it cannot carry into the next field
/// while the address stays inside shared memory.
__device__ __forceinline__ uint64_t advance_descriptor(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kMaxPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kMaxPending) : "memory");
}

/// Keeps the compiler from moving accesses to `regs` (accumulators, float, or A
/// fragments, uint32_t) across a wgmma issue or wait: the registers are in use by
/// the tensor cores in between.
template <typename T, int kFrags>
__device__ __forceinline__ void wgmma_pin(T (&regs)[kFrags][4]) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, uint32_t>, "wgmma_pin: float or uint32_t registers");
#pragma unroll
  for (int i = 0; i < kFrags; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (std::is_same_v<T, float>)
        asm volatile("" : "+f"(regs[i][e])::"memory");
      else
        asm volatile("" : "+r"(regs[i][e])::"memory");
    }
}

// The accumulator operand lists "{%0, ..., %(N/2 - 1)}" and "+f"(d[..][..]) ... of
// each N: the asm statement needs them spelled out.
#define TORCH_ATTN_WGMMA_ACC_32                                                    \
  "{"                                                                              \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
  "}"
#define TORCH_ATTN_WGMMA_ACC_64                                                      \
  "{"                                                                                \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"   \
  "}"
#define TORCH_ATTN_WGMMA_ACC_96                                                      \
  "{"                                                                                \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"   \
  "}"
#define TORCH_ATTN_WGMMA_ACC_128                                                                   \
  "{"                                                                                              \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                         \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "               \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "               \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "               \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "               \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "               \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "   \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
  "}"
#define TORCH_ATTN_F4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define TORCH_ATTN_F16(d, i) \
  TORCH_ATTN_F4(d, i), TORCH_ATTN_F4(d, i + 1), TORCH_ATTN_F4(d, i + 2), TORCH_ATTN_F4(d, i + 3)
#define TORCH_ATTN_OPERANDS_32(d) TORCH_ATTN_F16(d, 0), TORCH_ATTN_F16(d, 4)
#define TORCH_ATTN_OPERANDS_64(d) TORCH_ATTN_OPERANDS_32(d), TORCH_ATTN_F16(d, 8), TORCH_ATTN_F16(d, 12)
#define TORCH_ATTN_OPERANDS_96(d) TORCH_ATTN_OPERANDS_64(d), TORCH_ATTN_F16(d, 16), TORCH_ATTN_F16(d, 20)
#define TORCH_ATTN_OPERANDS_128(d) \
  TORCH_ATTN_OPERANDS_64(d), TORCH_ATTN_F16(d, 16), TORCH_ATTN_F16(d, 20), TORCH_ATTN_F16(d, 24), TORCH_ATTN_F16(d, 28)

// D (+)= A * B, A and B from shared memory, both K-major (no transpose).
#define TORCH_ATTN_WGMMA_SS(N, TYPE, ACC, DESC_A, DESC_B, SCALE)                                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #SCALE                                                      \
               ", 0;\n"                                                                                         \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TYPE "." #TYPE " " TORCH_ATTN_WGMMA_ACC_##ACC \
               ", %" #DESC_A ", %" #DESC_B ", p, 1, 1, 0, 0;\n}\n"                                              \
               : TORCH_ATTN_OPERANDS_##ACC(d)                                                                   \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate))

// D (+)= A * B, A from registers, B from shared memory MN-major (transposed: imm-trans-b = 1).
#define TORCH_ATTN_WGMMA_RS(N, TYPE, ACC, A0, A1, A2, A3, DESC_B, SCALE)                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #SCALE                                                      \
               ", 0;\n"                                                                                         \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TYPE "." #TYPE " " TORCH_ATTN_WGMMA_ACC_##ACC \
               ", {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #DESC_B ", p, 1, 1, 1;\n}\n"                     \
               : TORCH_ATTN_OPERANDS_##ACC(d)                                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))

/// d (+)= A B^T-style product of a K-major A [64 x 16] and K-major B [N x 16] in
/// shared memory; accumulate = 0 overwrites d.
template <int N, typename DType>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  constexpr bool kBf16 = std::is_same_v<DType, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<DType, __half>, "wgmma: bf16 or fp16");
  if constexpr (N == 64) {
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_SS(64, bf16, 32, 32, 33, 34);
    else
      TORCH_ATTN_WGMMA_SS(64, f16, 32, 32, 33, 34);
  } else if constexpr (N == 128) {
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_SS(128, bf16, 64, 64, 65, 66);
    else
      TORCH_ATTN_WGMMA_SS(128, f16, 64, 64, 65, 66);
  } else {
    static_assert(N == 256, "wgmma_ss: N is 64, 128 or 256");
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_SS(256, bf16, 128, 128, 129, 130);
    else
      TORCH_ATTN_WGMMA_SS(256, f16, 128, 128, 129, 130);
  }
}

/// d (+)= A B with A [64 x 16] in registers (mma.sync A-fragment layout, 4 x 2
/// values per thread) and B [16 x N] MN-major in shared memory.
template <int N, typename DType>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b,
                                         int accumulate) {
  constexpr bool kBf16 = std::is_same_v<DType, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<DType, __half>, "wgmma: bf16 or fp16");
  if constexpr (N == 64) {
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_RS(64, bf16, 32, 32, 33, 34, 35, 36, 37);
    else
      TORCH_ATTN_WGMMA_RS(64, f16, 32, 32, 33, 34, 35, 36, 37);
  } else if constexpr (N == 128) {
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_RS(128, bf16, 64, 64, 65, 66, 67, 68, 69);
    else
      TORCH_ATTN_WGMMA_RS(128, f16, 64, 64, 65, 66, 67, 68, 69);
  } else if constexpr (N == 192) {
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_RS(192, bf16, 96, 96, 97, 98, 99, 100, 101);
    else
      TORCH_ATTN_WGMMA_RS(192, f16, 96, 96, 97, 98, 99, 100, 101);
  } else {
    static_assert(N == 256, "wgmma_rs: N is 64, 128, 192 or 256");
    if constexpr (kBf16)
      TORCH_ATTN_WGMMA_RS(256, bf16, 128, 128, 129, 130, 131, 132, 133);
    else
      TORCH_ATTN_WGMMA_RS(256, f16, 128, 128, 129, 130, 131, 132, 133);
  }
}

#undef TORCH_ATTN_WGMMA_SS
#undef TORCH_ATTN_WGMMA_RS

}  // namespace torch_attn
