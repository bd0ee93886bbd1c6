// Stands in for prefill_cuda.cpp in builds without CUDA kernels (no nvcc, no GPU
// and no TORCH_ATTN_CUDA_ARCH_LIST, or a CPU-only torch), so CUDA tensors get a
// clear error instead of the dispatcher's "no kernel" message.
#include <c10/util/Exception.h>
#include "prefill.h"

namespace torch_attn {

namespace {
[[noreturn]] void no_cuda_kernels(const char* op) {
  TORCH_CHECK(false, op,
              ": this torch_attn build has no CUDA kernels (it was built CPU-only; "
              "`python -m torch_attn info` says why). Install a CUDA build of torch with nvcc available, or set "
              "TORCH_ATTN_CUDA_ARCH_LIST, and import torch_attn again to rebuild.");
}
}  // namespace

PrefillResult prefill_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           const c10::optional<at::Tensor>&, bool, c10::optional<double>, int64_t, int64_t, double,
                           const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                           const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                           c10::optional<at::ScalarType>) {
  no_cuda_kernels("attn.prefill");
}

PrefillResult prefill_paged_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, c10::string_view, bool, c10::optional<double>,
                                 int64_t, int64_t, double, const c10::optional<at::Tensor>&,
                                 const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                 const c10::optional<at::Tensor>&, c10::optional<at::ScalarType>) {
  no_cuda_kernels("attn.prefill_paged");
}

void prefill_out_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                      const c10::optional<at::Tensor>&, bool, c10::optional<double>, int64_t, int64_t, double,
                      const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                      const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, c10::optional<at::ScalarType>,
                      const at::Tensor&, const c10::optional<at::Tensor>&) {
  no_cuda_kernels("attn.prefill");
}

void prefill_paged_out_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, c10::string_view, bool, c10::optional<double>,
                            int64_t, int64_t, double, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, c10::optional<at::ScalarType>, const at::Tensor&,
                            const c10::optional<at::Tensor>&) {
  no_cuda_kernels("attn.prefill_paged");
}

}  // namespace torch_attn
