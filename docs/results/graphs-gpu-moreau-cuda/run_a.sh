#!/bin/bash
# Device call A (2026-12-05): install the carried wheels, keep the first half of cuDSS for call B,
# and run the GPU check of the current code.
set -u
date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; uptime
mkdir -p /tmp/parts /tmp/site
cp .dev_a/cudss.xz.partaa /tmp/parts/ && echo "part A kept"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev_a/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, numpy, scipy, cvxpy, cvxpylayers, moreau, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'cvxpy', cvxpy.__version__, 'moreau', moreau.__version__, 'pydantic', pydantic.__version__)"
git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head
python3 benchmarks/gpu_check.py --out $OUT/gpu --repeats 10 2>&1 | tee $OUT/gpu_check.log
echo "gpu_check rc ${PIPESTATUS[0]}"; date; uptime
