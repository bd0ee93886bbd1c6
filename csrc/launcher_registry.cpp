// The launcher table's slots, the registration of a family's launchers, and the one slow path: a
// call that needs a family not loaded yet asks the Python loader for it through the dispatcher.
#include "launcher_registry.h"
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <utility>
#include <vector>

namespace torch_attn {
namespace {

#define TORCH_ATTN_SM80_SLOT(KIND, W, FP8_KV) {Backend::kSm80, {ScalarKind::KIND, FP8_KV}, W, W},
#define TORCH_ATTN_SM80_SLOTS(W)            \
  TORCH_ATTN_SM80_SLOT(kBFloat16, W, false) \
  TORCH_ATTN_SM80_SLOT(kFloat16, W, false)  \
  TORCH_ATTN_SM80_SLOT(kBFloat16, W, true) TORCH_ATTN_SM80_SLOT(kFloat16, W, true)
#define TORCH_ATTN_SM90_SLOTS(W, WV) \
  {Backend::kSm90, {ScalarKind::kBFloat16, false}, W, WV}, {Backend::kSm90, {ScalarKind::kFloat16, false}, W, WV},
Launcher kLaunchers[] = {TORCH_ATTN_FOR_EACH_HEAD_DIM_TILE(TORCH_ATTN_SM80_SLOTS)
                             TORCH_ATTN_FOR_EACH_SM90_HEAD_DIM_TILE(TORCH_ATTN_SM90_SLOTS)};
#undef TORCH_ATTN_SM80_SLOT
#undef TORCH_ATTN_SM80_SLOTS
#undef TORCH_ATTN_SM90_SLOTS

bool stream_is_capturing(int device) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(device).stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

/// attn::_kernel_families: the families whose launchers have all registered (the loader checks a
/// family against it after loading; `python -m torch_attn info` lists them). A family's slots are
/// adjacent in the table.
std::vector<std::string> loaded_families() {
  std::vector<std::pair<std::string, bool>> families;  // (name, every slot loaded)
  for (const Launcher& l : kLaunchers) {
    const std::string family = family_name(l);
    if (families.empty() || families.back().first != family) families.emplace_back(family, true);
    families.back().second = families.back().second && l.launch.load(std::memory_order_acquire) != nullptr;
  }
  std::vector<std::string> loaded;
  for (const auto& [family, complete] : families) {
    if (complete) loaded.push_back(family);
  }
  return loaded;
}

}  // namespace

LauncherTable launcher_table() { return {kLaunchers, sizeof(kLaunchers) / sizeof(kLaunchers[0])}; }

bool register_launchers(std::initializer_list<LauncherRegistration> launchers) {
  bool all_matched = true;
  for (const LauncherRegistration& r : launchers) {
    bool matched = false;
    for (Launcher& l : kLaunchers) {
      if (l.backend == r.backend && l.kind.kind == r.kind.kind && l.kind.fp8_kv == r.kind.fp8_kv &&
          l.head_dim_tile == r.head_dim_tile && l.head_dim_v_tile == r.head_dim_v_tile) {
        l.launch.store(r.launch, std::memory_order_release);
        matched = true;
      }
    }
    all_matched = all_matched && matched;
  }
  return all_matched;
}

std::string family_name(const Launcher& launcher) {
  std::string name =
      (launcher.backend == Backend::kSm90 ? "sm90_hd" : "sm80_hd") + std::to_string(launcher.head_dim_tile);
  if (launcher.head_dim_v_tile != launcher.head_dim_tile) name += "_v" + std::to_string(launcher.head_dim_v_tile);
  return name;
}

LaunchFn load_launcher(const Launcher& launcher, int device) {
  const std::string family = family_name(launcher);
  const auto loader = c10::Dispatcher::singleton().findOp({"attn::_load_kernels", ""});
  TORCH_CHECK(loader.has_value(), "torch_attn: the CUDA kernels of family ", family,
              " are not loaded and no loader is registered: import torch_attn in this process (it builds and loads "
              "kernel families on first use), or use a library built with every family (TORCH_ATTN_AOT=1 or CMake)");
  torch::jit::Stack stack{c10::IValue(family), c10::IValue(stream_is_capturing(device))};
  loader->callBoxed(&stack);
  const LaunchFn loaded = launcher.launch.load(std::memory_order_acquire);
  TORCH_CHECK(loaded != nullptr, "torch_attn: kernel family ", family,
              " loaded without this launcher (its library was built from other sources; clear the cache)");
  return loaded;
}

}  // namespace torch_attn

TORCH_LIBRARY_FRAGMENT(attn, m) { m.def("_kernel_families() -> str[]", &torch_attn::loaded_families); }
