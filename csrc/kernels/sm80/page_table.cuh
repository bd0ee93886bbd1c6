// Where the keys of one sequence live in a paged KV cache.
#pragma once
#include <cstdint>
#include "kernels/common/params.h"

namespace torch_attn {

/// The page geometry stays in the kernel parameters (constant memory), not in
/// registers: the paged kernel has none to spare at head dim 128.
struct PageTable {
  const PrefillParams& p;
  const int32_t* pages;  // this sequence's row of the block table

  /// The page id holding key `key` (a raw block-table entry, loaded ahead of its use
  /// so that the copies of a tile never wait for it). Only called for keys < kv_len:
  /// entries past the sequence's last page are never read.
  __device__ __forceinline__ int32_t page_id(int key) const {
    return __ldg(pages + (p.page_shift >= 0 ? key >> p.page_shift : key / p.page_size));
  }

  /// Element offset of key `key`, found in page `page_id`, in a cache with the given page and slot strides.
  __device__ __forceinline__ int64_t offset(int key, int32_t page_id, int64_t page_stride, int64_t slot_stride) const {
    const int slot = p.page_shift >= 0 ? key & (p.page_size - 1) : key % p.page_size;
    const int page = page_id < 0 ? 0 : (page_id >= p.num_pages ? p.num_pages - 1 : page_id);  // stays inside the cache
    return page * page_stride + slot * slot_stride;
  }
};

}  // namespace torch_attn
