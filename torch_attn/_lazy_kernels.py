"""attn::_load_kernels(str family, bool capturing): the op the C++ dispatch calls when a call needs a
kernel family whose launchers are not loaded (csrc/launcher_registry.cpp), so that calls straight to
torch.ops.attn.* build their kernels too. `capturing`: whether the call's stream is capturing a CUDA
graph (then only a family already in the cache may load; see _loader.load_families)."""
import torch

from . import _loader

_LIBRARY = torch.library.Library("attn", "FRAGMENT")
_LIBRARY.define("_load_kernels(str family, bool capturing) -> ()")
# No tensor arguments: a CompositeExplicitAutograd kernel is what a call without tensors dispatches to.
_LIBRARY.impl("_load_kernels", _loader.load_family_by_name, "CompositeExplicitAutograd")
