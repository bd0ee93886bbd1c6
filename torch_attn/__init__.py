"""torch_attn: attention prefill kernels as PyTorch dispatcher ops (torch.ops.attn.*).

Importing the package loads the compiled ops, building them the first time (the kernels
are built per family, on first use: see torch_attn._loader), and registers their fake kernels
for torch.compile.
"""
from ._loader import load_library as _load_library

LIBRARY = _load_library()

from . import _lazy_kernels  # noqa: E402,F401  (the op that loads kernel families on first use)

from . import _fake  # noqa: E402,F401  (registers fake kernels)
from .ops import block_table_from_flashinfer, merge_states, prefill, prefill_paged  # noqa: E402

__version__ = "0.1.0"
__all__ = ["prefill", "prefill_paged", "merge_states", "block_table_from_flashinfer", "LIBRARY", "__version__"]
