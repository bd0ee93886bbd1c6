// The Hopper prefill kernel (sm_90a): the algorithm of sm80/prefill_kernel.cuh on wgmma,
// with warp specialisation and a persistent grid.
//
// A CTA per SM walks its list of work items (a query tile [BM rows] of one head of
// one sequence each; order and balance in the kernel body). Its warpgroups:
//   * warpgroup 0, the producer, loads each item's Q and then its K_j, V_j into a
//     ring of kStages shared-memory stages and announces each tile on an mbarrier;
//     it waits on "empty" mbarriers before refilling a stage. Two warps drive the
//     copy engine (TMA, 128-byte swizzled boxes), warp 0 for Q and K, warp 1 for V,
//     for contiguous K/V and for paged caches with pages of 8, 16, ... rows (other
//     page sizes run on the mma.sync kernel); the other two warps exit at once;
//   * warpgroups 1 .. kConsumerGroups (2, or 3 at width 64), the consumers, own 64
//     query rows each:
//         S_j = Q K_j^T        wgmma, Q and K_j from shared memory
//         P_j = softmax weights of S_j      (in registers; OnlineSoftmax, as mma.sync,
//                                            at the rows' current max where it can)
//         O  += P_j V_j        wgmma, P from registers, V_j from shared memory
//     with S_{j+1} = Q K_{j+1}^T and O += P_j V_j issued together, so the softmax of
//     tile j+1 runs on the CUDA cores while the tensor cores finish P_j V_j.
// setmaxnreg moves registers from the producer (addresses only) to the consumers.
//
// Reading past valid data. The copy engine zero-fills only outside the tensor's
// bounds: rows past a dense sequence and head-dim padding (beyond the map's dims)
// arrive as zeros, but inside a ragged batch the rows past a sequence's end are the
// next sequence's, and in a paged cache the rest of the last page is garbage. Those
// rows are harmless in Q (never stored) and K (their scores are replaced by -inf
// through a select), but a NaN in V times weight 0 is NaN: so the producer overwrites
// the rows past kv_len of the one V tile that reaches them with zeros before the
// consumers may read it (the mma.sync path never reads them: cp.async zero-fills).
//
// Files: shared_storage.cuh (tiles, barriers and who arrives on them), item_tiles.cuh (an item's
// K/V tiles per CTA and per consumer group), producer.cuh, consumer.cuh; this file: the
// persistent loop over work items and the hand-over of each item between the roles.
#pragma once
#include <cstdint>
#include "kernels/common/params.h"
#include "kernels/common/smem_address.cuh"
#include "kernels/common/tail_split.cuh"
#include "kernels/common/warp_utils.cuh"
#include "kernels/common/work_item.cuh"
#include "kernels/sm90/consumer.cuh"
#include "kernels/sm90/prefill_traits.cuh"
#include "kernels/sm90/producer.cuh"
#include "kernels/sm90/registers.cuh"
#include "kernels/sm90/shared_storage.cuh"
#include "kernels/sm90/tma.cuh"

namespace torch_attn {

template <class Traits, bool kSoftCap, bool kPaged, bool kChunked>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    prefill_sm90_kernel(const __grid_constant__ PrefillParams params, const __grid_constant__ Sm90TensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<Sm90SharedStorage<Traits>*>(smem_raw + (1024 - smem_address(smem_raw) % 1024) % 1024);
  static_assert(sizeof(smem) + 1024 <= Traits::kSmemBytes, "the traits reserve the shared storage");
  if (threadIdx.x == 0) {
    // The arrivals each barrier counts: Sm90Barriers.
    const uint32_t full_arrivals = 1;
    for (int s = 0; s < Traits::kQStages; ++s) {
      smem.bar.q_full[s].init(full_arrivals);
      smem.bar.q_empty[s].init(Traits::kConsumerWarps);
    }
    for (int s = 0; s < Traits::kStages; ++s) {
      smem.bar.k_full[s].init(full_arrivals);
      smem.bar.v_full[s].init(full_arrivals);
      smem.bar.k_empty[s].init(Traits::kConsumerWarps);  // one arrival per consumer warp
      smem.bar.v_empty[s].init(Traits::kConsumerWarps);
    }
    smem.bar.tail.init(1);
    for (int s = 0; s < Traits::kItemSlots; ++s) {
      smem.bar.item_written[s].init(1);
      smem.bar.item_read[s].init(32 + 128 * Traits::kConsumerGroups);
    }
  }
  __syncthreads();

  // Persistent. Work items come heaviest first (find_work_item); the CTA's first is
  // item blockIdx.x, and each later one is claimed as the previous one's loads end: the
  // next item of the list that no CTA has taken (params.item_counter; without it the
  // grid covers every item). Claiming balances the SMs where a static assignment
  // could not: the items' costs differ under a causal mask, and a round-robin (snake)
  // order left SMs idle once the group boundaries of the list shifted it (simulated:
  // 79% of the ideal for d128 causal S=4096 B=4, 99% with claiming). Producer warp 0
  // claims and finds the items; the other roles read them from shared memory (the
  // CTA's k-th item in slot k % kItemSlots; end_of_list after the last). The
  // pipeline's stages and phases run on across items; tiles_done counts K/V tiles.
  // Items of equal cost that would leave SMs idle (a last, partial round, or fewer
  // items than SMs) may run as pieces of their K/V tiles, claimed after the whole
  // items (tail_split.h).
  const int group = static_cast<int>(threadIdx.x) / 128;
  constexpr int kItemSlots = Traits::kItemSlots;
  uint32_t tiles_done = 0;
  // The roles' views of an item (each builds its own, after setmaxnreg).
  auto producer_of = [&](const WorkItem& work) {
    return Sm90Producer<Traits, kPaged, kChunked>{{params, work, smem, params.head_dim_v / 8}};
  };
  auto consumer_of = [&](const WorkItem& work) {
    return Sm90Consumer<Traits, kSoftCap, kPaged, kChunked>{{params, work, smem, params.head_dim_v / 8}};
  };
  // The V warp and the consumers: body(role_of(item), k) for the CTA's k-th item, read from its
  // slot throughout. Every reading thread arrives on item_read itself: an arrival
  // releases only the arriving thread's own earlier reads.
  auto for_each_handed_item = [&](auto&& role_of, auto&& body) {
    for (int k = 0;; ++k) {
      const int slot = k % kItemSlots;
      smem.bar.item_written[slot].wait((k / kItemSlots) & 1);
      const WorkItem& work = smem.items[slot];
      if (work.is_end_of_list()) break;
      body(role_of(work), k);
      smem.bar.item_read[slot].arrive();
    }
  };
  if (group == 0) {
    release_registers<Traits::kProducerRegs>();
    const int lane = static_cast<int>(threadIdx.x) % 32;
    uint32_t tail_loads = 0;
    if (threadIdx.x < 32) {  // warp 0: claims and finds the items, loads Q and K
      // A claim is a whole item or a piece of a tail item (tail_split.h).
      int item = static_cast<int>(blockIdx.x);
      for (int k = 0;; ++k) {
        const int slot = k % kItemSlots;
        smem.bar.item_read[slot].wait(((k / kItemSlots) & 1) ^ 1);  // item k - kItemSlots is done
        __syncwarp();                                               // (and this warp's own reads of it)
        {
          // Tiles aligned to the sequence's end: rows before it load as zeros (dense, or the
          // first sequence of a ragged batch) or as the previous sequence's, never stored.
          WorkItem found;
          if (!find_claimed_work<Traits::kBlockM, /*kMaySplit=*/!kPaged>(params, item, found)) {
            found = WorkItem::end_of_list();  // (a ragged batch's spare items come last)
          } else if constexpr (Traits::kGroupTileRanges) {
            // Lane g works out consumer group g's tiles.
            const unsigned skips = lane < Traits::kConsumerGroups
                                       ? static_cast<unsigned>(producer_of(found).group_skips(lane)) << (8 * lane)
                                       : 0u;
            found.group_skips = static_cast<int>(__reduce_or_sync(0xffffffffu, skips));
          }
          if (lane == 0) {
            smem.items[slot] = found;
            smem.bar.item_written[slot].arrive();
          }
        }
        // Read back from shared memory like the other roles do: the producer's few
        // registers cannot hold the item as well.
        __syncwarp();
        const WorkItem& work = smem.items[slot];
        if (work.is_end_of_list()) break;
        producer_of(work).template produce_with_tma<false>(maps, kPaged ? work.block_table_row(params) : nullptr, lane,
                                                           tiles_done, tail_loads, k);
        // The next item, claimed once this one's K tiles are on their way (the consumers
        // are a stage or two behind, which hides the atomic's latency). Claimed any
        // earlier, the CTAs would start the items of one K/V head (GQA) at times further
        // apart, and read its keys from DRAM once each instead of once together.
        int next = params.split.claims;
        if (params.item_counter != nullptr && lane == 0) {
          // (The grid size read here, not kept: kept across the item, it was spilled.)
          unsigned grid;
          asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(grid));
          next = atomicAdd(params.item_counter, 1) + static_cast<int>(grid);
        }
        item = __shfl_sync(0xffffffffu, next, 0);
      }
    } else if (threadIdx.x < 64) {  // warp 1: V
      for_each_handed_item(producer_of, [&](auto&& producer, int k) {
        producer.template produce_with_tma<true>(maps, kPaged ? producer.w.block_table_row(params) : nullptr, lane,
                                                 tiles_done, tail_loads, k);
      });
    }  // warps 2 and 3 are done
  } else {
    // One round of work (no more claims than CTAs: no counter): consumer group g starts
    // g - 1 of a group's tile steps of tensor-core time (BN x D / 16 cycles: 2 x 64 x
    // BN x D multiply-adds at 2048 a cycle) after group 1, so that one group's softmax
    // runs under the others' products. Begun together, the groups stayed in step through
    // the whole item, their softmaxes coinciding while the tensor cores idled: 128 items
    // of 128 tiles on 132 SMs took 329-334 us at base clocks, 243 us staggered (H100,
    // ncu), against 228 us per round inside a 15.5-round run. In longer runs the groups
    // fall out of step by themselves, and staggering every CTA's start cost 1.5-2.2% at
    // d128, 16k tokens (2048 items). It is skipped where keys are few as well (kv_len, an
    // upper bound for ragged batches and page tables, below 8 K/V tiles): there the delay,
    // up to 1024 cycles, would be a large part of the kernel (not measured).
    if (params.item_counter == nullptr && params.kv_len >= 8 * Traits::kBlockN) {
      spin_for_cycles((group - 1) * (Traits::kBlockN * Traits::kHeadDim / 16));
    }
    claim_registers<Traits::kConsumerRegs>();
    for_each_handed_item(consumer_of, [&](auto&& consumer, int k) {
      consumer.consume(group - 1, (static_cast<int>(threadIdx.x) / 32) % 4, static_cast<int>(threadIdx.x) % 32,
                       tiles_done, k);
    });
  }
#else
  // Compiled for another architecture: the host launches this kernel only from
  // builds with sm_90a code, on devices of compute capability 9.0.
  __trap();
#endif
}

}  // namespace torch_attn
