#!/usr/bin/env bash
# SASS of every instantiation (sm_90a and sm_80) into DIR (tools/sass_snapshot.sh DIR): the proof that a
# mechanical change changes no machine code (tools/sass_compare.py BEFORE AFTER).
set -euo pipefail
out=$(realpath -m $1); mkdir -p $out; cd "$(dirname "$0")/.."
nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
cuobjdump=$(python3 -c "import triton,os;print(os.path.dirname(triton.__file__))")/backends/nvidia/bin/cuobjdump
flags=$(python3 -c "import json;s=json.load(open('csrc/build_spec.json'));print(' '.join(s['nvcc_flags']))")
# The instantiations' translation units, generated from the tile lists as the build generates them.
sources=$(python3 torch_attn/_build_spec.py instantiations $out/src | tr ';' ' ')
for src in $sources; do
  for arch in 90a 80; do
    name=$(basename $src .cu)_sm$arch
    ( $nvcc -c $src -o $out/$name.o -std=c++17 $flags -DTORCH_ATTN_HAS_SM90A -gencode=arch=compute_$arch,code=sm_$arch -I csrc \
      && $cuobjdump -sass $out/$name.o | grep -v "^\s*$" | sed 's/^\s*//' > $out/$name.sass && rm $out/$name.o ) &
    while [ $(jobs -r | wc -l) -ge 2 ]; do sleep 1; done
  done
done
wait; ls $out/*.sass | wc -l
