// One kernel variant per translation unit, so builds compile them in parallel.
#include "launch/sm90_launch.cuh"
TORCH_ATTN_INSTANTIATE_PREFILL_SM90(kFloat16, 64, 64)
