// Stands in for prefill_cuda.cpp in builds without CUDA kernels (no nvcc, no GPU
// and no TORCH_ATTN_CUDA_ARCH_LIST, or a CPU-only torch), so CUDA tensors get a
// clear error instead of the dispatcher's "no kernel" message.
#include <c10/util/Exception.h>
#include "prefill.h"

namespace torch_attn {

PrefillResult prefill_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           const c10::optional<at::Tensor>&, bool, c10::optional<double>, int64_t, double) {
  TORCH_CHECK(false,
              "attn.prefill: this torch_attn build has no CUDA kernels (it was built CPU-only; "
              "`python -m torch_attn info` says why). Install a CUDA build of torch with nvcc available, or set "
              "TORCH_ATTN_CUDA_ARCH_LIST, and import torch_attn again to rebuild.");
}

}  // namespace torch_attn
