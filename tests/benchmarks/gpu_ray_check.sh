#!/usr/bin/env bash
# GPU checks through Ray on the device machine (no Ray installed there: wheels travel in .whl/).
# Usage (repo root, OUT = a folder for logs):  OUT=/tmp/out bash tests/benchmarks/gpu_ray_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm_=(python3 -m raymeta.cli.main)
W=/tmp/gpuw; rm -rf "$W"; mkdir -p "$W"
echo "== 1. torch-only checks and throughput"
timeout 200 python3 tests/benchmarks/gpu_check.py --json "$OUT/gpu_check.json" || echo "gpu_check rc=$?"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import ray; print('ray', ray.__version__)" || exit 0
echo "== 2. Ray Train meta-train on 1 GPU worker (NCCL)"
timeout 150 "${rm_[@]}" meta-train --family sinusoid --steps 300 --meta-batch 100 --outer-lr 5e-3 \
  --workers 1 --gpus-per-worker 1 --log-every 100 --out "$W/meta" || echo "meta-train rc=$?"
timeout 60 "${rm_[@]}" priors fit --meta "$W/meta" --tasks 8 --configs 32 --objective anytime --max-steps 100 || echo "priors rc=$?"
echo "== 3. raymeta tune with packed members on the GPU (4 trials x 1024 members, 0.25 GPU each)"
timeout 150 "${rm_[@]}" tune --meta "$W/meta" --task sinusoid:0 --trials 4 \
  --members-per-trial 1024 --gpus-per-trial 0.25 --budget $((4 * 1024 * 100)) --quiet \
  --out "$W/tune" || echo "tune rc=$?"
cp "$W/tune/report.json" "$OUT/tune_report.json" 2>/dev/null
echo "== done"
