#!/usr/bin/env bash
# Before/after comparison of a refactor on this machine: every command runs on an OLD checkout
# and on this one, back to back, with the same checkpoints (issue 13's table in BENCHMARKS.md).
# Usage (repo root, a quiet machine, ~45 min):
#   git worktree add /tmp/old 93c5960 && OLD=/tmp/old OUT=/tmp/bench bash tests/benchmarks/before_after.sh
# Both sides run with this checkout's .venv; PYTHONPATH picks the code. Logs: $OUT/{old,new}-*.log
set -u
PY=${PY:-$PWD/.venv/bin/python}
NEW=$PWD
B=${OUT:?set OUT to a work folder}
mkdir -p "$B"
export RAYMETA_KEY_FILE=$B/run-key PYTHONUNBUFFERED=1
run() {  # run WHO(old|new) raymeta ARGS...
  local who=$1 tree; shift
  tree=$([ "$who" = old ] && echo "$OLD" || echo "$NEW")
  (cd "$tree" && PYTHONPATH=$tree "$PY" -m raymeta.cli.main "$@")
}
stamp() { echo "=== $(date +%T) $*"; }
if [ ! -f "$B/meta/meta.json" ]; then  # bench tune's default checkpoint, built by the old code
  stamp "build the bench-tune checkpoint"
  (cd "$OLD" && PYTHONPATH=$OLD "$PY" -c "
from pathlib import Path; import shutil
from raymeta.bench.tune import _default_meta
shutil.move(str(_default_meta('sinusoid', 500, 100, Path('$B'))), '$B/meta')")
fi
for who in old new; do
  stamp "$who: bench tune packing"; run $who bench tune --meta "$B/meta" --tasks 0 > "$B/$who-pack.log" 2>&1
done
for who in old new; do
  stamp "$who: quickstart"; rm -rf "$B/qs-$who"
  run $who quickstart --out "$B/qs-$who" > "$B/$who-qs.log" 2>&1
done
for who in old new; do
  stamp "$who: bench sweep --tasks 200"; rm -rf "$B/sw-$who"; mkdir -p "$B/sw-$who"
  [ -d "$B/sw-meta" ] && cp -r "$B/sw-meta" "$B/sw-$who/meta"
  run $who bench sweep --tasks 200 --out "$B/sw-$who" > "$B/$who-sweep.log" 2>&1
  [ -d "$B/sw-meta" ] || cp -r "$B/sw-$who/meta" "$B/sw-meta"
done
for who in old new; do
  stamp "$who: bench tune time to quality, 20 tasks"
  run $who bench tune --meta "$B/meta" --tasks 20 --packing-steps 0 > "$B/$who-ttq.log" 2>&1
done
for i in 1 2 3; do for who in old new; do
  tree=$([ "$who" = old ] && echo "$OLD" || echo "$NEW")
  (cd "$tree" && PYTHONPATH=$tree "$PY" "$NEW/tests/benchmarks/population_step.py") >> "$B/popstep.log" 2>&1
done; done
stamp done
