// The launcher table: one slot per kernel variant the traits' tile lists name, filled when the
// library holding that variant's kernels loads. The JIT builds the variants in families (one per
// kernel and head-dim tile, torch_attn/_build_spec.py), each into a shared library of its own, on
// first use; AOT and CMake builds link every family into the one library. No torch headers: the
// families' generated registration files include this.
#pragma once
#include <cuda_runtime_api.h>
#include <atomic>
#include <cstddef>
#include <initializer_list>
#include <string>
#include "launch/prefill_launch.h"

namespace torch_attn {

using LaunchFn = cudaError_t (*)(const PrefillParams&, cudaStream_t);

/// One compiled kernel: the mma.sync kernel (sm_80+) or the wgmma kernel (sm_90a).
enum class Backend { kSm80, kSm90 };

/// What a kernel computes in: its compute dtype, and whether k and v (and maybe q) arrive as fp8 codes.
struct KernelKind {
  ScalarKind kind;
  bool fp8_kv;
};

struct Launcher {
  Backend backend;
  KernelKind kind;
  int head_dim_tile;                      // of Q and K
  int head_dim_v_tile;                    // of V and O (the mma.sync kernel's tiles: the same)
  std::atomic<LaunchFn> launch{nullptr};  // null until its family's library has loaded
};

/// Every slot, loaded or not: a call's kernel is chosen from all of them, so that the choice never
/// depends on which families a process happens to have loaded.
struct LauncherTable {
  Launcher* begin() const { return first; }
  Launcher* end() const { return first + size; }
  Launcher* first;
  size_t size;
};
LauncherTable launcher_table();

/// A family's library registers its launchers as it loads (a static initialiser); false if one
/// matches no slot (a library built from other sources than the host's).
struct LauncherRegistration {
  Backend backend;
  KernelKind kind;
  int head_dim_tile;
  int head_dim_v_tile;
  LaunchFn launch;
};
bool register_launchers(std::initializer_list<LauncherRegistration> launchers);

/// The family a launcher belongs to, as torch_attn/_build_spec.py names it: "sm80_hd128", "sm90_hd192_v128".
std::string family_name(const Launcher& launcher);

/// Loads the launcher's family through the Python loader (the op attn::_load_kernels, which builds it
/// the first time and refuses to compile while `device`'s current stream captures a CUDA graph).
LaunchFn load_launcher(const Launcher& launcher, int device);

/// The launcher's function, its family loaded first if it is not yet: after that one load, an atomic
/// read (no lock, no Python) on every call.
inline LaunchFn launch_fn(const Launcher& launcher, int device) {
  const LaunchFn loaded = launcher.launch.load(std::memory_order_acquire);
  return loaded != nullptr ? loaded : load_launcher(launcher, device);
}

}  // namespace torch_attn
