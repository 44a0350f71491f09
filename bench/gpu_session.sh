#!/usr/bin/env bash
# One device session: unpack Ray and Optuna (../shared/tools/device-bundle.sh made .devbundle),
# run the GPU tests, then bench/gpu.py. Figures land in $OUT (gpu.json, deeplob_profile.txt, logs).
#   bash bench/gpu_session.sh [BUDGET_S] [SECTIONS]
set -uo pipefail
budget=${1:-420}
sections=${2:-acbd}
out=${OUT:-docs/bench}
mkdir -p /tmp/site "$out"
tar -xJf .devbundle/site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
python3 -c "import ray, optuna, pydantic, torch; print('ray', ray.__version__, 'optuna', optuna.__version__, 'torch', torch.__version__)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$out/pytest_gpu.log" | tail -15
python3 bench/gpu.py --out "$out" --budget "$budget" --sections "$sections" 2>&1 | tee "$out/gpu.log"
