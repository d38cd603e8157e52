"""``raymeta bench sweep``: a large sweep (default 200 held-out sinusoid tasks x 5 strategies,
``auto`` included)
on the embedded local Ray; reports wall time, units/s and the peak memory of the whole process
tree (driver, raylet, workers), then the per-strategy summary table."""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from raymeta.options import add_renamed
from raymeta.paths import output_arg

HELP = "large sweep: wall time, peak memory and the strategy table"
STRATEGIES = [
    "scratch+broad+random",
    "scratch+broad+pbt",
    "meta+fixed-default",
    "meta+learned+pbt",
    "auto",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=200, help="held-out tasks")
    p.add_argument("--population", type=int, default=8, help="members per unit")
    p.add_argument("--steps-per-member", type=int, default=50, help="steps of every member")
    add_renamed(p, "--budget", "--steps-per-member", type=int)
    p.add_argument(
        "--meta-steps", type=int, default=1000, help="meta-training steps for the checkpoint"
    )
    p.add_argument(
        "--out",
        type=output_arg("--out"),
        default=None,
        help="keep results here (default: a temp dir)",
    )


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and its descendants, read from /proc (Linux)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int((d / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    keep, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while frontier:
        for c in children.get(frontier.pop(), []):
            if c not in keep:
                keep.add(c)
                frontier.append(c)
    return sum(rss.get(p, 0) for p in keep)


class _PeakRSS:
    """Samples the summed RSS of this process and all its descendants every 0.5 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, _tree_rss(os.getpid()))

    def __enter__(self) -> _PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run(args: argparse.Namespace) -> int:
    from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
    from raymeta.core.train import MetaTrainConfig, meta_train
    from raymeta.finetune import fit_priors
    from raymeta.orchestration.sweep.config import parse_sweep
    from raymeta.orchestration.sweep.run import run_sweep
    from raymeta.results import read_results
    from raymeta.results.render import render
    from raymeta.results.summary import notes, summarise, win_rates

    root = Path(args.out or tempfile.mkdtemp(prefix="raymeta-bench-sweep-"))
    meta = root / "meta"
    if not (meta / "meta.json").exists():
        t = time.perf_counter()
        tr = meta_train(MetaTrainConfig(steps=args.meta_steps, meta_batch=25, inner_steps=1))
        save_meta_checkpoint(meta, tr.to_checkpoint())
        write_priors(
            meta, fit_priors(load_meta_checkpoint(meta), n_tasks=32, n_configs=64).to_dict()
        )
        print(f"meta-checkpoint + priors in {time.perf_counter() - t:.1f}s")
    cfg = parse_sweep(
        {
            "name": "bench",
            "meta": [str(meta)],
            "strategies": STRATEGIES,
            "tasks": args.tasks,
            "population": args.population,
            "steps_per_member": args.steps_per_member,
            "interval": max(1, args.steps_per_member // 10),
        }
    )
    with _PeakRSS() as mem:
        res = run_sweep(cfg, root / "results", progress=False)
    n = res["units"]
    print(
        f"sweep: {n} units ({args.tasks} tasks x {len(STRATEGIES)} strategies) in {res['wall_s']:.1f}s "
        f"= {res['ran'] / max(res['wall_s'], 1e-9):.2f} units/s; peak RSS of the process tree {mem.peak / 2**30:.2f} GiB"
    )
    table = read_results(root / "results", sweep="bench")
    rows, wins = summarise(table), win_rates(table)
    print(render(rows, "markdown", wins=wins, notes=notes(rows, wins)))
    print(f"results: {root / 'results'}")
    return 0
