// Host harness for fp8_to_float (csrc/kernels/common/fp8_convert.cuh), the conversion the mma.sync
// kernel runs where the GPU has no fp8 convert instruction (sm_80 to sm_88): prints the float32 bits
// of every code, e4m3 then e5m2 (tests/test_index_math.py compares them with torch's conversion).
#include <cstdio>
#include <cstring>
#include "kernels/common/fp8_convert.cuh"

int main() {
  for (const auto format : {torch_attn::ElementFormat::kE4M3, torch_attn::ElementFormat::kE5M2}) {
    for (uint32_t code = 0; code < 256; ++code) {
      const float value = torch_attn::fp8_to_float(code, format);
      uint32_t bits;
      std::memcpy(&bits, &value, sizeof(bits));
      std::printf("%u\n", bits);
    }
  }
  return 0;
}
