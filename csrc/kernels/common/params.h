// Plain description of one prefill call, shared by the host glue and the kernels.
// No torch and no CUDA headers: the host fills it, the kernel reads it by value.
#pragma once
#include <cstdint>
#include "kernels/common/tail_split.h"

namespace torch_attn {

/// How a tensor's elements are stored where the kernels take fp8 (kernels/common/fp8_convert.cuh):
/// the kernel's compute dtype, or one of the two fp8 codes (real value = code * descale).
enum class ElementFormat : uint8_t { kCompute = 0, kE4M3 = 1, kE5M2 = 2 };

/// Per-tensor (stride 0) or per-head (stride 1) descale factors of an fp8 input; null: 1.
struct Descale {
  const float* values;
  int32_t head_stride;
};

// Element strides of a [batch, token, head, dim] view; dim is contiguous.
// int64: a KV cache of 2M tokens x 8 heads x 128 holds more than 2^31 elements.
struct TokenHeadStrides {
  int64_t batch;  // 0 for a ragged batch, whose sequences are found through an indptr
  int64_t token;
  int64_t head;
};

struct PrefillParams {
  const void* q;  // [.., qo_len, num_qo_heads, head_dim_qk]
  const void* k;  // [.., kv_len, num_kv_heads, head_dim_qk]
  const void* v;  // [.., kv_len, num_kv_heads, head_dim_v]
  void* out;      // [.., qo_len, num_qo_heads, head_dim_v]
  float* lse;     // q's shape without head_dim, natural log
  TokenHeadStrides q_strides, k_strides, v_strides, out_strides, lse_strides;

  // Sequences. A dense batch has null indptrs and every sequence is qo_len x kv_len.
  // A ragged batch has cu_seqlens-style indptrs [num_seqs + 1] on the device; then
  // qo_len / kv_len are the row counts of q / k, used to clamp bad indptr values
  // into bounds (the host cannot check device data without a sync).
  const int32_t* qo_indptr;
  const int32_t* kv_indptr;
  int32_t num_seqs;
  int32_t qo_len;
  int32_t kv_len;

  int32_t num_qo_heads;
  int32_t group_size;  // num_qo_heads / num_kv_heads (GQA/MQA)
  // The real head dims of q . k and of v (MLA: they differ). The kernels run one tile
  // width >= both: columns past head_dim_qk are zero in Q and K, past head_dim_v zero
  // in V (so O is zero there) and never stored.
  int32_t head_dim_qk;
  int32_t head_dim_v;

  // Paged KV cache (block_table null: K/V rows of a sequence are contiguous). Key j of
  // sequence b sits in page block_table[b * block_table_stride + j / page_size] at slot
  // j % page_size: element offset page * strides.batch + slot * strides.token + head *
  // strides.head (so NHD and HND caches differ only in strides). kv_lens[b] keys are
  // valid; page ids are clamped into [0, num_pages) and kv_lens into the table's
  // capacity, so bad values cannot reach outside the cache.
  const int32_t* block_table;
  int64_t block_table_stride;
  const int32_t* kv_lens;
  int32_t page_size;
  int32_t page_shift;  // log2(page_size) for powers of two, else -1
  int32_t num_pages;
  int32_t max_pages;  // block_table columns

  // Masks: bottom-right causal, sliding window (window_left < 0: none), chunks of
  // chunk_size key positions (0: none; chunk_rcp = 1 / chunk_size, mask.cuh).
  bool causal;
  int32_t window_left;
  int32_t chunk_size;
  float chunk_rcp;

  // Logits: logit = cap > 0 ? cap * tanh(qk * pre_cap_scale) : qk, and the
  // softmax weight is exp2((logit - max) * logit_to_log2). Without a cap,
  // logit_to_log2 = sm_scale * log2(e) folds the scale into the exponent.
  float soft_cap;
  float pre_cap_scale;  // sm_scale / soft_cap
  float logit_to_log2;
  // Attention sinks: per query head, the logit (natural log, taken as is) of one more key
  // whose value is 0; null without sinks.
  const float* sinks;

  // Work items: the grid is num_q_tile_slots * num_qo_heads CTAs. Dense: exactly
  // num_seqs * ceil(qo_len / BM) slots. Ragged: an upper bound computed from
  // shapes (total_q / BM + num_seqs); CTAs past the real tiles exit at once.
  int32_t num_q_tile_slots;
  // Dense batches: (sequence, head) pairs whose query tiles run together, so that
  // their K/V stays in L2 (work_item.cuh); >= 1.
  int32_t pairs_per_group;
  // > 0: a persistent grid of at most this many CTAs, each looping over work items
  // (the wgmma kernel: one per SM); 0: one CTA per work item.
  int32_t max_ctas;
  // Persistent grid with more items than CTAs: a counter the host zeroes before each
  // launch; CTAs claim their items after the first from it (item = count + grid size).
  int32_t* item_counter;
  // The wgmma kernel's claims past the whole items: pieces of the last items' K/V
  // (tail_split.h). The host sets first_item to the item count where it does not split.
  TailSplit split;

  // fp8 inputs (the kernels compiled for fp8 K/V; elsewhere kCompute and unused): the formats of
  // q and of k/v, and their descale factors. S = (q_descale[h] * k_descale[h_kv]) * q.k, and
  // out = v_descale[h_kv] * (P V) / l: the factors fold into the scores and the epilogue.
  ElementFormat q_format;
  ElementFormat kv_format;
  Descale q_descale, k_descale, v_descale;
};

}  // namespace torch_attn
