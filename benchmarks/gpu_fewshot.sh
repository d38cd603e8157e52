#!/usr/bin/env bash
# The full Omniglot protocol of `raymeta bench fewshot` (issue 18) on one GPU, as one prepared
# script for the device machine (limit: 10 minutes a command). Not yet run: no GPU was lent to
# the session that wrote it, so BENCHMARKS.md has no GPU rows (never estimates).
#
# Usage (repo root; OUT = a folder for the logs and JSON records):
#   OUT=/tmp/out OMNIGLOT=/path/to/omniglot bash benchmarks/gpu_fewshot.sh [SETTING ...]
# SETTING defaults to "5w1s 5w1s-mamlpp" (plain MAML, then MAML++, sharing one pretrained
# baseline; the target is >= 99.3% with <= 5 min of meta-training); "20w1s 20w1s-mamlpp" (target
# >= 96.5%, <= 10 min) takes a call of its own. The Omniglot archives (5.6 MB) must travel with
# the working tree: copy them under shared/omniglot/ (or carry them) and the default finds them.
#
# No Ray is needed: `bench fewshot` meta-trains in-process (raymeta.meta_train), so unlike
# tests/benchmarks/gpu_ray_check.sh no wheels are installed. If .whl/ holds wheels (the project's
# convention for carrying Ray to the device machine) they are installed the same way, so a
# later Ray-based variant can reuse this script.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/fewshot-out}; mkdir -p "$OUT"
OMNIGLOT=${OMNIGLOT:-$PWD/shared/omniglot}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
SETTINGS=("$@"); [ ${#SETTINGS[@]} -eq 0 ] && SETTINGS=(5w1s 5w1s-mamlpp)
args=(); for s in "${SETTINGS[@]}"; do args+=(--setting "$s"); done
tag=$(IFS=_; echo "${SETTINGS[*]}")
echo "== omniglot ${SETTINGS[*]}, full budget, cuda"
timeout 590 python3 -m raymeta.cli.main bench fewshot --suite omniglot --budget full "${args[@]}" \
  --device cuda --data-path "$OMNIGLOT" --out "$OUT/omniglot_$tag.json" \
  2>&1 | tee "$OUT/omniglot_$tag.log" || echo "omniglot rc=$?"
echo "== done"
