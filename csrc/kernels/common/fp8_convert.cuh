// fp8 codes (float8_e4m3fn, float8_e5m2) to the kernels' 16-bit compute dtypes. Exact: every e4m3
// and e5m2 value, subnormals included, is an fp16 and a bf16 value; NaN stays NaN and e5m2's inf
// stays inf (e4m3fn has no inf; its NaN codes are 0x7F and 0xFF), as torch's conversion does.
#pragma once
#include <cstdint>
#include <cstring>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>
#include "kernels/common/params.h"

namespace torch_attn {

/// One code as a float32: its exponent and mantissa bits moved into float32's (the exponent's low
/// bits), then rescaled by 2^(127 - bias), a power of two, so exact; the codes' subnormals become
/// float32 subnormals, which the multiply keeps (the kernels build without flush-to-zero).
/// Runs on the host too: tests/host/fp8_convert.cu checks every code against torch.
__host__ __device__ inline float fp8_to_float(uint32_t code, ElementFormat format) {
  const bool e4m3 = format == ElementFormat::kE4M3;
  const uint32_t sign = (code & 0x80u) << 24, magnitude = code & 0x7Fu;
  const uint32_t bits = sign | (magnitude << (e4m3 ? 20 : 21));  // 4 + 3 or 5 + 2 bits below float32's bit 27
  float value;
  memcpy(&value, &bits, sizeof(value));
  value *= e4m3 ? 0x1p120f : 0x1p112f;
  if (e4m3 ? magnitude == 0x7Fu : magnitude >= 0x7Cu) {  // the all-ones exponent: NaN (e5m2: inf at mantissa 0)
    const uint32_t special = sign | (!e4m3 && magnitude == 0x7Cu ? 0x7F800000u : 0x7FC00000u);
    memcpy(&value, &special, sizeof(value));
  }
  return value;
}

/// Two codes (the low two bytes of `codes`, the lower first) as an fp16 pair in one register.
__device__ __forceinline__ uint32_t fp8x2_to_half2(uint32_t codes, ElementFormat format) {
  if (format == ElementFormat::kE5M2) return __byte_perm(codes, 0, 0x1404);  // e5m2 is fp16's upper byte
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t pair;
  asm("{\n .reg .b16 lo;\n cvt.u16.u32 lo, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}" : "=r"(pair) : "r"(codes));
  return pair;
#else
  const __half2 pair =
      __floats2half2_rn(fp8_to_float(codes & 0xFFu, format), fp8_to_float((codes >> 8) & 0xFFu, format));
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
#endif
}

/// Two codes as a pair of DType (fp16 or bf16) in one register; fp16 -> bf16 goes through
/// float32, exact for these values.
template <typename DType>
__device__ __forceinline__ uint32_t fp8x2_to(uint32_t codes, ElementFormat format) {
  const uint32_t half_pair = fp8x2_to_half2(codes, format);
  if constexpr (std::is_same_v<DType, __half>) {
    return half_pair;
  } else {
    static_assert(std::is_same_v<DType, __nv_bfloat16>, "fp8x2_to: fp16 or bf16");
    __half2 h;
    memcpy(&h, &half_pair, sizeof(h));
    const __nv_bfloat162 pair = __float22bfloat162_rn(__half22float2(h));
    uint32_t bits;
    memcpy(&bits, &pair, sizeof(bits));
    return bits;
  }
}

/// A 16-byte chunk of 16 codes as 16 DType values: two 16-byte chunks, in order.
template <typename DType>
__device__ __forceinline__ void fp8x16_to(const uint4& codes, ElementFormat format, uint4 (&out)[2]) {
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
  uint32_t pairs[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    pairs[2 * i] = fp8x2_to<DType>(words[i], format);
    pairs[2 * i + 1] = fp8x2_to<DType>(words[i] >> 16, format);
  }
  out[0] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
  out[1] = make_uint4(pairs[4], pairs[5], pairs[6], pairs[7]);
}

/// A descale factor of head `head` (per-tensor factors have stride 0; null: none, 1).
__device__ __forceinline__ float descale_of(const Descale& d, int head) {
  return d.values == nullptr ? 1.f : __ldg(d.values + head * d.head_stride);
}

}  // namespace torch_attn
