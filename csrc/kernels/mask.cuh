// Which keys a query sees, in one place.
//
// Queries and keys are indexed within their sequence. Causal masks are aligned
// bottom-right: with diag = kv_len - qo_len, query i sees key j iff
//     j < kv_len                               (the sequence's keys)
//     causal      -> j <= i + diag             (no key after the query's position)
//     window >= 0 -> j >= i + diag - window    (sliding window of window_left keys)
// For one query the visible keys are a single interval [begin, end), so the kernel
// computes it once per row and masks each score with two compares.
#pragma once
#include <cstdint>

namespace torch_attn {

struct KeyInterval {
  int begin;  // first visible key
  int end;    // one past the last visible key; end <= begin: the row sees nothing
};

struct VisibleKeys {
  int kv_len;
  int diag;  // kv_len - qo_len
  bool causal;
  int window_left;  // < 0: no window

  /// The keys query `i` sees. int64 inside: i + diag - window_left may overflow int32.
  __device__ __forceinline__ KeyInterval of_query(int i) const {
    const int64_t last = static_cast<int64_t>(i) + diag;  // the query's own position among the keys
    int64_t end = causal ? last + 1 : kv_len;
    int64_t begin = window_left >= 0 ? last - window_left : 0;
    end = end < kv_len ? end : kv_len;
    begin = begin > 0 ? begin : 0;
    return {static_cast<int>(begin), static_cast<int>(end)};
  }
};

}  // namespace torch_attn
