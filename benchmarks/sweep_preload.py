"""Same-process A/B behind BENCHMARKS.md "Issue 17, twelfth pass": a Ray sweep whose embedded
Ray's workers import torch and the batches' module as they start
(``sweep.backends.PRELOAD``, what raymeta does) against workers that import them when their
first task arrives (before; ``PRELOAD = ()`` here). Each round runs ``raymeta bench sweep``'s
sweep (sinusoid, ``bench.sweep.sweep_config``) through a fresh embedded Ray in each mode, in
alternating order, into a fresh results folder; prints the wall, the Ray start and stop, and the
rest (the batches, the workers' first imports among them).

Usage: ``python benchmarks/sweep_preload.py META [TASKS] [ROUNDS]`` (META: e.g. the checkpoint
``raymeta bench sweep --out DIR`` keeps in DIR/meta; TASKS default 200, ROUNDS 3).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from raymeta.bench.sweep import sweep_config
from raymeta.orchestration.sweep import backends
from raymeta.orchestration.sweep.run import run_sweep

MODES = {"before": (), "after": backends.PRELOAD}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    meta, *rest = sys.argv[1:]
    tasks, rounds = ([int(v) for v in rest] + [200, 3][len(rest) :])[:2]
    cfg = sweep_config(meta, tasks)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in list(MODES) if r % 2 == 0 else list(MODES)[::-1]:
                backends.PRELOAD = MODES[mode]
                try:
                    res = run_sweep(cfg, Path(tmp) / f"{mode}-{r}", progress=False)
                finally:
                    backends.PRELOAD = MODES["after"]
                rest_s = res["wall_s"] - res["start_s"] - res["stop_s"]
                best[mode] = min(best.get(mode, float("inf")), res["wall_s"])
                print(
                    f"round {r + 1} {mode:6s} wall {res['wall_s']:.2f} s: Ray start "
                    f"{res['start_s']:.2f} s, stop {res['stop_s']:.2f} s, the rest {rest_s:.2f} s",
                    flush=True,
                )
    for mode, wall in best.items():
        print(f"{mode:6s} best wall {wall:.2f} s: {best['before'] / wall:.2f}x before")


if __name__ == "__main__":
    main()
