#include "cuda_scratch.h"
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace torch_attn {

at::Tensor launch_scratch(int64_t bytes, const at::Tensor& like, cudaStream_t stream) {
  const auto options = like.options().dtype(at::kByte);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return at::empty({bytes}, options);
  static std::mutex mutex;
  // Never destroyed: freeing device memory from a static destructor at exit races CUDA's own teardown.
  static auto* buffers = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& buffer = (*buffers)[{like.get_device(), stream}];
  if (!buffer.defined() || buffer.numel() < bytes) {
    // Doubling keeps a growing workload from allocating on every call.
    buffer = at::empty({std::max(bytes, 2 * (buffer.defined() ? buffer.numel() : int64_t{0}))}, options);
  }
  return buffer;
}

}  // namespace torch_attn
