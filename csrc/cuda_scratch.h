// Scratch device memory of the CUDA launches: the work-item counter, the tail split's partial
// results, an lse the caller did not ask for.
#pragma once
#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>
#include <cstdint>

namespace torch_attn {

/// At least `bytes` of device memory on `like`'s device for work queued on `stream`, free for
/// the caller's launch until the next call on the same stream. Outside graph capture it is one
/// buffer per (device, stream) that only grows, so that calls in a steady state allocate
/// nothing, and the stream orders one launch's use before the next one's. During capture it
/// is a fresh allocation from the graph's pool: a buffer shared with eager calls would be
/// written by the graph's replays, on whatever stream they run.
at::Tensor launch_scratch(int64_t bytes, const at::Tensor& like, cudaStream_t stream);

}  // namespace torch_attn
