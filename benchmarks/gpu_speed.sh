#!/usr/bin/env bash
# Issue 17's GPU targets as one prepared script for the device machine (limit: 10 minutes a
# command): population member-steps/s of the eager and the compiled trainer (CUDA graphs)
# against a bare vmap(grad) SGD population at 1,024 and 16,384 sinusoid members, then the
# CUDA correctness checks and engine / population throughput of tests/benchmarks/gpu_check.py
# (sinusoid MAML up to large meta-batches, Conv4 vmapped vs looped). No Ray is needed.
# Not yet run: no GPU was lent to the session that wrote it (BENCHMARKS.md has no such rows).
#
# Usage (repo root): OUT=/tmp/out bash benchmarks/gpu_speed.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/speed-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for cfg in sgd mixed; do
  echo "== bench population ($cfg members), eager and compiled, cuda"
  timeout 240 python3 -m raymeta.cli.main bench population --device cuda --compile \
    --members 1024 16384 --members-config "$cfg" --out "$OUT/population_$cfg.json" \
    2>&1 | tee "$OUT/population_$cfg.log" || echo "population $cfg rc=$?"
done
echo "== gpu_check (correctness, engine and population throughput)"
timeout 240 python3 tests/benchmarks/gpu_check.py --json "$OUT/gpu_check.json" \
  2>&1 | tee "$OUT/gpu_check.log" || echo "gpu_check rc=$?"
echo "== done"
