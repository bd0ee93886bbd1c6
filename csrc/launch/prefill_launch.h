// Host-side entry points of the CUDA prefill kernels. No torch headers: the
// torch glue (prefill_cuda.cpp) includes this, and each instantiation file
// (generated from the tile lists by torch_attn/_build_spec.py) defines one of them.
#pragma once
#include <cuda_runtime_api.h>
#include "kernels/common/params.h"
#include "kernels/sm80/prefill_traits.cuh"
#include "kernels/sm90/prefill_traits.cuh"

namespace torch_attn {

enum class ScalarKind { kFloat16, kBFloat16 };

/// Launches the prefill kernel for one compute type and head-dim tile width on `stream`;
/// kFp8KV: k and v (and maybe q) hold fp8 codes (params.kv_format, q_format). Returns the
/// launch error, if any; never synchronises.
template <ScalarKind kKind, int kHeadDimTile, bool kFp8KV>
cudaError_t launch_prefill(const PrefillParams& params, cudaStream_t stream);

/// The same for the Hopper kernel (kernels/sm90/prefill_kernel.cuh), whose tiles may give V
/// a narrower width: compiled from every build, but with a body only for sm_90a; launch it
/// only on compute capability 9.0 from builds that include sm_90a code (TORCH_ATTN_HAS_SM90A).
template <ScalarKind kKind, int kHeadDimTile, int kHeadDimVTile>
cudaError_t launch_prefill_sm90(const PrefillParams& params, cudaStream_t stream);

/// Query rows per CTA for a head-dim tile width (the host sizes the grid with it).
int prefill_block_m(int head_dim_tile);
int prefill_sm90_block_m(int head_dim_tile, int head_dim_v_tile);
/// Keys per K/V tile of the wgmma kernel (the tail split counts tiles).
int prefill_sm90_block_n(int head_dim_tile, int head_dim_v_tile);

/// Shared memory one CTA needs, to check against the device's per-block limit.
size_t prefill_smem_bytes(int head_dim_tile, bool fp8_kv);
size_t prefill_sm90_smem_bytes(int head_dim_tile, int head_dim_v_tile);

}  // namespace torch_attn
