// Host harness for KvTileRange (csrc/kernels/common/mask.cuh), the kernels' own code: reads work items
// "kv_len qo_len causal window_left chunk_size q_row0 rows block_n" from stdin, one per line, and prints
// "begin count full_begin full_end" (tests/test_index_math.py checks them against every row's keys).
#include <cstdio>
#include "kernels/common/mask.cuh"

template <int kBlockN>
torch_attn::KvTileRange range_of(const torch_attn::VisibleKeys& keys, int q_row0, int rows) {
  return torch_attn::KvTileRange::of<kBlockN>(keys, q_row0, rows);
}

int main() {
  long long kv_len, qo_len, q_row0, rows;
  int causal, window_left, chunk_size, block_n;
  while (std::scanf("%lld %lld %d %d %d %lld %lld %d", &kv_len, &qo_len, &causal, &window_left, &chunk_size, &q_row0,
                    &rows, &block_n) == 8) {
    const float rcp = chunk_size > 0 ? static_cast<float>(1.0 / static_cast<double>(chunk_size)) : 0.f;
    const int base = chunk_size > 0 ? torch_attn::VisibleKeys::chunk_base_of(q_row0 + kv_len - qo_len, chunk_size) : 0;
    const torch_attn::VisibleKeys keys{
        static_cast<int>(kv_len), static_cast<int>(kv_len - qo_len), causal != 0, window_left, chunk_size, base, rcp};
    const int r0 = static_cast<int>(q_row0), n = static_cast<int>(rows);
    const torch_attn::KvTileRange t = block_n == 64 ? range_of<64>(keys, r0, n) : range_of<128>(keys, r0, n);
    std::printf("%d %d %d %d\n", t.begin, t.count, t.full_begin, t.full_end);
  }
  return 0;
}
