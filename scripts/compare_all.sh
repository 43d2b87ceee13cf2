#!/usr/bin/env bash
# Trace the same training steps in every backend's own environment, then compare them.
#
#   scripts/compare_all.sh [ENV_DIR] [trace options...]
#   tox -e compare                       # the same, with tox's environments
#
# ENV_DIR holds one virtual environment per backend, named as tox names them
# (numpy, torch, tf, mxnet, paddle, mindspore, jax; default .tox); a backend whose
# environment is missing is skipped and said so. The frameworks cannot share one
# environment, so each traces in its own, and compare (which imports no framework)
# reads all the traces in the numpy one. Every trace runs with THREADS CPU threads
# (default 1): results depend on the thread count, and the traces record it.
# Extra arguments go to every `resnet-multi trace` (default: 10 steps of the quick
# preset's recipe, data and batches at width 16 and batch 64). Traces, report and plot go to OUT (default
# traces/); the exit status is compare's (non-zero if TOLERANCE is set and exceeded).
set -euo pipefail
env_dir=$(realpath -m "${1:-.tox}")
shift || true
out=$(realpath -m "${OUT:-traces}")
cd "$(dirname "$0")/.."  # the repository: its resnet_multi comes first on each python's path
threads=${THREADS:-1}
trace_args=("$@")
# The quick preset's recipe at width 16: the float64 NumPy reference takes ~40 s a step at width 64.
[ ${#trace_args[@]} -gt 0 ] || trace_args=(--steps 10 --width 16 --batch-size 64)
# Set before any python starts: NumPy's BLAS reads these at start-up, the frameworks too.
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
    TF_NUM_INTRAOP_THREADS=$threads TF_NUM_INTEROP_THREADS=$threads MPLBACKEND=Agg
mkdir -p "$out"
traces=()
for backend in numpy torch tf mxnet paddle mindspore jax; do
    python="$env_dir/$backend/bin/python"
    if [ ! -x "$python" ]; then
        echo "skipping $backend: no environment at $env_dir/$backend (tox -e $backend builds it)" >&2
        continue
    fi
    echo "== $backend" >&2
    "$python" -m resnet_multi.cli trace --backend "$backend" --device cpu --threads "$threads" \
        "${trace_args[@]}" --out "$out/$backend.safetensors"
    traces+=("$out/$backend.safetensors")
done
compare_python="$env_dir/numpy/bin/python"
[ -x "$compare_python" ] || compare_python=python3
tolerance=()
[ -z "${TOLERANCE:-}" ] || tolerance=(--tolerance "$TOLERANCE")
"$compare_python" -m resnet_multi.cli compare "${traces[@]}" --plot "$out/compare.png" ${tolerance[@]+"${tolerance[@]}"} \
    | tee "$out/report.txt"
