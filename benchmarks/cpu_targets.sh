#!/usr/bin/env bash
# Issue 17's CPU targets, each against its ceiling, as one script (about 20-30 minutes on the
# 2-core CPU; run it on an otherwise idle machine, alone):
#   1. population trainer vs a bare vmap(grad) SGD population at 64 / 1,024 / 16,384 members;
#   2. `bench sweep --tasks 200`: sweep member-steps/s vs the bare population, through Ray and
#      with --local, and the part files it wrote;
#   3. packed tune (4x16 vs 64x1, 400 steps per member): whole-run and in-trial ratios;
#   4. Conv4 5-way 1-shot, meta-batch 32: engine vs looped vs bare torch.func, with peak memory;
#   5. `priors fit` with its defaults on a 784-feature 5-way 5-shot Parquet family (MLP 128x128):
#      wall time and peak memory (GNU time's maximum resident set size).
# Each log lands in $OUT; BENCHMARKS.md ("Issue 17: where every target stands") quotes them.
#
# Usage (repo root, after `make setup`): OUT=/tmp/cpu-targets bash benchmarks/cpu_targets.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-$PWD/.venv/bin/python}
OUT=${OUT:-/tmp/cpu-targets}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
REPO=$PWD
# run from a neutral directory: `python -m` puts the working directory first on sys.path, and
# Ray's workers inherit the driver's, so a stale checkout there would be what gets timed
cd "$OUT" || exit 1
RAYMETA=(env "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m raymeta)
step() { echo; echo "== $1 ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
"$PY" -c 'import raymeta, torch, ray; print("raymeta", raymeta.__file__, "torch", torch.__version__, "ray", ray.__version__)'

step "1. population trainer vs bare vmap(grad) SGD population"
timeout 1200 "${RAYMETA[@]}" bench population --members 64 1024 16384 --repeats 3 \
  --out "$OUT/population.json" 2>&1 | tee "$OUT/population.log"

step "2. bench sweep --tasks 200 (through Ray, then --local)"
timeout 1200 "${RAYMETA[@]}" bench sweep --tasks 200 --out "$OUT/sweep" --bare-repeats 3 --local \
  2>&1 | tee "$OUT/sweep.log"
find "$OUT/sweep" -name '*.parquet' -path '*results*' | awk -F/ '{print $(NF-1)}' | sort | uniq -c \
  | tee "$OUT/sweep_parts.txt"

step "3. packed tune, 4x16 vs 64x1 at 400 steps per member"
timeout 1200 "${RAYMETA[@]}" bench tune --meta "$OUT/sweep/meta" --tasks 0 --packing-steps 400 \
  2>&1 | tee "$OUT/tune.log"

step "4. Conv4 5-way 1-shot, meta-batch 32: engine vs looped vs bare"
timeout 1200 "${RAYMETA[@]}" bench engine --only conv4 --out "$OUT/conv4.json" 2>&1 | tee "$OUT/conv4.log"

step "5. priors fit with its defaults on a 784-feature 5-way 5-shot family"
if [ ! -f "$OUT/img784.parquet" ]; then
  PYTHONPATH="$REPO" "$PY" "$REPO/benchmarks/make_image_family.py" "$OUT/img784.parquet"
fi
if [ ! -d "$OUT/img784-meta" ]; then
  "${RAYMETA[@]}" meta-train --family parquet --family-option "path=$OUT/img784.parquet" \
    --family-option shots=5 --family-option queries=15 --model mlp \
    --model-option 'widths=[128,128]' --local --steps 50 --out "$OUT/img784-meta" --quiet
fi
/usr/bin/time -v -o "$OUT/priors_time.txt" "${RAYMETA[@]}" priors fit \
  --meta "$OUT/img784-meta" 2>&1 | tail -n 5 | tee "$OUT/priors.log"
grep -E "Elapsed|Maximum resident" "$OUT/priors_time.txt" | tee -a "$OUT/priors.log"
step "done"
