// The attn ops have no backward. Their Autograd kernel refuses inputs that require grad
// (while grad mode is on), naming the argument, where the dispatcher's fallback would
// return outputs whose gradients are silently missing; then it runs the op below autograd.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <torch/library.h>
#include <string>

namespace torch_attn {
namespace {

void reject_inputs_that_require_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                     torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    const auto& arguments = op.schema().arguments();
    const auto inputs = torch::jit::last(*stack, arguments.size());
    for (size_t i = 0; i < arguments.size(); ++i) {
      const bool requires_grad = inputs[i].isTensor() && inputs[i].toTensor().requires_grad();
      if (!requires_grad) continue;
      std::string name = op.schema().name();  // "attn::prefill" -> "attn.prefill" (overloads too)
      name.replace(name.find("::"), 2, ".");
      TORCH_CHECK(false, name, ": ", arguments[i].name(),
                  " requires grad, but torch_attn is inference-only (its ops "
                  "have no backward): call it under torch.no_grad() or torch.inference_mode(), or pass detached "
                  "tensors");
    }
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace
}  // namespace torch_attn

TORCH_LIBRARY_IMPL(attn, Autograd, m) {
  for (const char* op : {"prefill", "prefill_paged", "prefill.out", "prefill_paged.out", "merge_states"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&torch_attn::reject_inputs_that_require_grad>());
  }
}
