// One kernel variant per translation unit, so builds compile them in parallel.
#include "launch/sm80_launch.cuh"
TORCH_ATTN_INSTANTIATE_PREFILL(kBFloat16, 256, false)
