#!/usr/bin/env bash
# One GPU session in one command: build (cold, then cached import), GPU tests,
# sanitizers, benchmark. Used on the lent H100, where every minute counts.
#   benchmarks/run_on_gpu.sh [tests] [sanitize] [demo] [cmake] [flashinfer=fa2,fa3] [bench[=FILTER]]
# Writes logs and tables under ${OUT:-/tmp/torch_attn_out}.
set -uo pipefail
out=${OUT:-/tmp/torch_attn_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_ATTN_CACHE_DIR=${TORCH_ATTN_CACHE_DIR:-/tmp/torch_attn_cache}
if ls .whl/*.whl >/dev/null 2>&1; then  # peers carried as wheels (FlashInfer)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # scripts under tests/ and benchmarks/ import torch_attn
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
echo "== cold import (JIT build)"; /usr/bin/time -f "cold import: %e s" python3 -c "import torch_attn" 2>&1 | tail -3
echo "== cached import"; /usr/bin/time -f "cached import: %e s" python3 -c "import torch_attn"
python3 -m torch_attn info
fi_backends=""
for arg in "$@"; do
  case "$arg" in
    tests) python3 -m pytest tests -q -m gpu -x -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -25 ;;
    sanitize)  # both kernels where both run (TORCH_ATTN_BACKEND=sm90 fails fast elsewhere)
      for backend in sm80 sm90; do
        for tool in memcheck racecheck; do
          log="$out/$tool-$backend.log"
          TORCH_ATTN_BACKEND=$backend compute-sanitizer --tool $tool --error-exitcode 9 \
            python3 tests/sanitize_prefill.py >"$log" 2>&1
          echo "compute-sanitizer $tool, $backend: exit $? ($(grep -cE 'ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards' "$log") clean summaries)"
          tail -3 "$log"
        done
      done ;;
    demo) python3 -m torch_attn demo 2>&1 | tee "$out/demo.log" ;;
    cmake)  # the libtorch build from CMakeLists.txt, loaded and called once
      cmake -S . -B /tmp/torch_attn_cmake -DTORCH_ATTN_CUDA_ARCH_LIST=9.0a \
        -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" >"$out/cmake.log" 2>&1 \
        && cmake --build /tmp/torch_attn_cmake -j >>"$out/cmake.log" 2>&1 \
        && python3 -c "import torch; torch.ops.load_library('/tmp/torch_attn_cmake/libtorch_attn_C.so'); \
q = torch.randn(300, 8, 128, device='cuda', dtype=torch.bfloat16); o, l = torch.ops.attn.prefill(q, q, q, causal=True); \
print('cmake build: ran attn.prefill, finite:', bool(o.isfinite().all()))" || { echo "cmake build FAILED"; tail -20 "$out/cmake.log"; } ;;
    flashinfer=*) fi_backends=${arg#flashinfer=} ;;
    bench*) filter=${arg#bench}; filter=${filter#=}
      python3 benchmarks/bench_prefill.py --only "$filter" --flashinfer "$fi_backends" \
        --markdown "$out/bench.md" --json "$out/bench.json" --plot "$out/bench.png" 2>&1 | tee "$out/bench.log" | tail -60 ;;
  esac
done
