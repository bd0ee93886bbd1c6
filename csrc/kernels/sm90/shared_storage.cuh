// The wgmma kernel's shared memory: its tiles, its mbarriers (with their arrival counts) and the
// hand-over slots of its work items.
#pragma once
#include <cstdint>
#include "kernels/common/work_item.cuh"
#include "kernels/sm90/mbarrier.cuh"

namespace torch_attn {

/// Who arrives on each barrier (the counts prefill_sm90_kernel initialises them with):
///   *_full: one arrival, by the loading warp, with the byte count the copy engine then completes;
///   *_empty: one arrival per consumer warp once its wgmma reads of the stage are done;
///   tail: the V warp's own (one arrival with bytes): a V tile that runs past kv_len has landed;
///   item_written: producer warp 0, once the slot's work item is written;
///   item_read: every thread of the V warp and of the consumers, each done reading the slot.
template <int kStages, int kQStages, int kItemSlots>
struct Sm90Barriers {
  MBarrier q_full[kQStages];
  MBarrier q_empty[kQStages];  // (Traits::kOutThroughQ: out stored through the Q tile too)
  MBarrier k_full[kStages];
  MBarrier v_full[kStages];
  MBarrier k_empty[kStages];
  MBarrier v_empty[kStages];
  MBarrier tail;
  MBarrier item_written[kItemSlots];
  MBarrier item_read[kItemSlots];
};

/// The tiles: Q, K and V stages and, with one Q stage, out's staging tile
/// (Traits::OutStageTile).
template <class Traits, bool kOwnOutStage = !Traits::kOutThroughQ>
struct Sm90Tiles {
  using DType = typename Traits::DType;
  DType q[Traits::kQStages][Traits::QTile::kElems];
  DType k[Traits::kStages][Traits::KTile::kElems];
  DType v[Traits::kStages][Traits::VTile::kElems];
  __device__ __forceinline__ DType* out_stage(int q_stage) { return q[q_stage]; }
};
template <class Traits>
struct Sm90Tiles<Traits, true> : Sm90Tiles<Traits, false> {
  typename Traits::DType out[Traits::kOutStageElems];
  __device__ __forceinline__ typename Traits::DType* out_stage(int) { return out; }
};

/// The CTA's shared memory (1024-byte aligned: the swizzle atoms need it).
template <class Traits>
struct Sm90SharedStorage : Sm90Tiles<Traits> {
  using Barriers = Sm90Barriers<Traits::kStages, Traits::kQStages, Traits::kItemSlots>;
  Barriers bar;
  WorkItem items[Traits::kItemSlots];  // the CTA's k-th work item in slot k % kItemSlots
  static_assert(sizeof(WorkItem) <= Traits::kItemBytes, "the traits reserve the work items");
  static_assert(sizeof(Barriers) == Traits::kBarrierBytes, "the traits reserve the barriers");
};

}  // namespace torch_attn
