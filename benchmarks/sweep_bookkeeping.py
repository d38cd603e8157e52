"""What one sweep worker's batch costs beyond its population steps (BENCHMARKS.md "Issue 17,
sixth pass: sweep bookkeeping").

For each of ``raymeta bench sweep``'s strategies: ``run_batch`` of one batch of ``--tasks``
held-out tasks (the batch a 200-task bench sweep gives each of its 2 workers: 100 units of 8
members, 50 steps, an evaluation every 5), in one thread, timed with ``time.process_time``
(CPU seconds of this process: less sensitive than wall time to a shared machine's
neighbours), best of ``--repeats``; member-steps/s counts the population's steps and refits.
Each strategy also prints a digest of its rows (wall times left out), so two code versions
can be checked for bit-identical results as well as timed. ``--profile`` adds a cProfile
top-20 (by own time) of one batch of ``--profile-strategy``.

META is a meta-checkpoint with priors, e.g. the one ``raymeta bench sweep --out DIR`` keeps in
DIR/meta. Run it under two trees (``PYTHONPATH=<tree>``), interleaved, to compare versions.
Usage: python benchmarks/sweep_bookkeeping.py META [--tasks N] [--repeats N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import time

import pyarrow.compute as pc
import torch

from raymeta.bench.sweep import sweep_config
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.results.sink import KeyedRows


def digest(rows: KeyedRows) -> str:
    """A hash of every row but its wall time: equal digests, bit-identical results."""
    table = rows.table.drop_columns([c for c in rows.table.column_names if c == "wall_s"])
    clean = {"keys": list(rows.keys), "rows": table.to_pylist()}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def member_steps(rows: KeyedRows) -> int:
    t = rows.table
    return int(pc.sum(t.filter(pc.equal(t["metric"], "test_loss"))["step"]).as_py() or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("meta")
    ap.add_argument("--tasks", type=int, default=100, help="units per strategy (one batch)")
    ap.add_argument("--repeats", type=int, default=5, help="timings per strategy; best kept")
    ap.add_argument("--only", default=None, help="time this strategy only")
    ap.add_argument("--profile", action="store_true", help="add a cProfile top-20")
    ap.add_argument("--profile-strategy", default="meta+learned+pbt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = sweep_config(args.meta, args.tasks)
    batches = plan_batches(cfg.units(), 1, args.tasks)
    run_batch(batches[0][:2], cfg)  # warm-up: imports, caches, first calls
    total = 0.0
    for b in batches:
        name = str(b[0]["strategy"])
        if args.only and name != args.only:
            continue
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            t = time.process_time()
            rows = run_batch(b, cfg)
            best = min(best, time.process_time() - t)
        total += best
        print(
            f"{name:22s} {len(b)} units {best:6.3f} s  {member_steps(rows) / best:9,.0f} "
            f"member-steps/s  rows {digest(rows)}",
            flush=True,
        )
    print(f"{'all':22s} {total:6.3f} s")
    if args.profile:
        b = next(b for b in batches if b[0]["strategy"] == args.profile_strategy)
        prof = cProfile.Profile()
        prof.runcall(run_batch, b, cfg)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
