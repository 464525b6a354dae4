#!/usr/bin/env bash
# The CUDA backend on real hardware, in under 5 minutes: the CUDA tests on the GPU, then W1, W2
# and W4 against PyTorch CUDA eager (when torch with CUDA is installed), with ratios.
# Without a GPU it runs the same tests on Numba's CUDA simulator, says so, and times nothing.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if "$PY" -c "from numba import cuda; import sys; sys.exit(0 if cuda.is_available() else 1)" 2>/dev/null; then
    echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo '?')"
    "$PY" -c "import numba, numba.cuda as c; print('numba', numba.__version__, '| numba.cuda from', c.__file__)"
    echo "== CUDA tests on the GPU (kernels compile on first use)"
    status=0
    timeout 230 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py || status=1  # time the rest anyway
    echo "== W1, W2, W4: graphc target=cuda vs PyTorch CUDA eager (ms per training step)"
    timeout 60 "$PY" -m benchmarks.gpu_bench --workloads W1,W2,W4 --steps 30 || status=1
    exit $status
else
    echo "== no usable GPU here: running the CUDA tests on the simulator only (NUMBA_ENABLE_CUDASIM=1), no timings"
    NUMBA_ENABLE_CUDASIM=1 timeout 280 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py
fi
