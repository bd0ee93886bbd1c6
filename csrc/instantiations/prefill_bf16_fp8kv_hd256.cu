// One kernel variant per translation unit (fp8 K/V), so builds compile them in parallel.
#include "launch/sm80_launch.cuh"
TORCH_ATTN_INSTANTIATE_PREFILL(kBFloat16, 256, true)
