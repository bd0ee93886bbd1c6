// Host harness for VisibleKeys (csrc/kernels/common/mask.cuh), the kernels' own code: reads work
// items "kv_len qo_len causal window_left chunk_size q_row0 rows" from stdin, one per line, and
// prints each row's interval "begin end" (tests/test_index_math.py compares them with exact math).
#include <cstdio>
#include "kernels/common/mask.cuh"

int main() {
  long long kv_len, qo_len, q_row0, rows;
  int causal, window_left, chunk_size;
  while (std::scanf("%lld %lld %d %d %d %lld %lld", &kv_len, &qo_len, &causal, &window_left, &chunk_size, &q_row0,
                    &rows) == 7) {
    // As the host (prefill_cuda.cpp) and WorkItem::visible_keys fill them in.
    const float rcp = chunk_size > 0 ? static_cast<float>(1.0 / static_cast<double>(chunk_size)) : 0.f;
    const int base = chunk_size > 0 ? torch_attn::VisibleKeys::chunk_base_of(q_row0 + kv_len - qo_len, chunk_size) : 0;
    const torch_attn::VisibleKeys keys{
        static_cast<int>(kv_len), static_cast<int>(kv_len - qo_len), causal != 0, window_left, chunk_size, base, rcp};
    for (long long r = 0; r < rows; ++r) {
      const torch_attn::KeyInterval row = keys.of_query(static_cast<int>(q_row0 + r));
      std::printf("%d %d\n", row.begin, row.end);
    }
  }
  return 0;
}
