"""``raymeta bench sweep``: a large sweep (default 200 held-out sinusoid tasks x 5 strategies,
``auto`` included)
on the embedded local Ray; reports wall time, units/s, member-steps/s, the results' part-file
count and the peak memory of the whole process tree (driver, raylet, workers), then the
per-strategy summary table.

The ceiling, measured in the same run right after each sweep: a bare ``torch.func``
``vmap(grad)`` full-batch SGD population of the sweep's member count (same model, each member on
a held-out task's train split, as many steps as a member), on as many threads as the sweep had
CPU slots, best of ``--bare-repeats`` timings. ``sweep / bare`` is how much of the machine's
vmapped throughput the sweep's scheduling, PBT, evaluation, final picks and result writing
leave (issue 17). Each row also gives the backend's start and stop (an embedded Ray's
``ray.init`` and shutdown; the local worker pool's fork) and the rate without them: a process
that runs several sweeps on one Ray (a cluster, a notebook) pays them once; its workers' first
imports stay in the rate.

``--local`` also times the Ray-free sweep (``run_sweep(local=True)``, worker processes on this
machine) right after the Ray one in every repeat: two rows, each against the same bare ceiling,
and whether both gave the same rows. Why: on a small machine Ray's start, its workers' first
imports and its shutdown cost more than the sweep's fine-tuning (issue 17). The local row's peak
RSS counts the pages its forked workers share with the driver once per process, so it
overstates that sweep's memory.

The meta-checkpoint and priors are kept in ``--out`` and reused; every sweep writes a fresh
``results-N`` folder there, so a rerun measures again instead of finding every unit done. The
figures of every row are also written to ``bench-sweep.json`` there (a list of records)."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymeta.options import add_renamed, int_arg
from raymeta.paths import output_arg

if TYPE_CHECKING:
    from raymeta.orchestration.sweep.config import SweepConfig

HELP = "large sweep: wall time, peak memory and the strategy table"
STRATEGIES = [
    "scratch+broad+random",
    "scratch+broad+pbt",
    "meta+fixed-default",
    "meta+learned+pbt",
    "auto",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int_arg(1), default=200, help="held-out tasks")
    p.add_argument("--population", type=int_arg(1), default=8, help="members per unit")
    p.add_argument("--steps-per-member", type=int_arg(1), default=50, help="steps of every member")
    add_renamed(p, "--budget", "--steps-per-member", type=int_arg(1))
    p.add_argument(
        "--meta-steps",
        type=int_arg(1),
        default=1000,
        help="meta-training steps for the checkpoint",
    )
    p.add_argument(
        "--out",
        type=output_arg("--out"),
        default=None,
        help="keep the checkpoint (reused when present) and results here (default: a temp dir)",
    )
    p.add_argument(
        "--batch-units",
        type=int_arg(1),
        default=None,
        help="most units one Ray task trains packed (default: the sweep's; 1: every unit alone)",
    )
    p.add_argument(
        "--repeat", type=int_arg(1), default=1, help="sweeps (each followed by its bare ceiling)"
    )
    p.add_argument(
        "--bare-repeats",
        type=int_arg(1),
        default=3,
        help="timings of the bare ceiling after each sweep; the best is reported (default 3)",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="also time the sweep without Ray (raymeta sweep --local) after the Ray one: a row each",
    )


def check_args(args: argparse.Namespace) -> None:
    """Every flag against the sweep's own limits (``parse_sweep``'s upper bounds, which the
    flags' ``int_arg`` types do not know), and ``--out``, before the meta-checkpoint is trained:
    the sweep config is only built after that training, so a size it refuses would otherwise
    fail minutes into the run."""
    from raymeta import checks
    from raymeta.orchestration.sweep.config import MAX_POPULATION, MAX_STEPS, MAX_TASKS
    from raymeta.orchestration.sweep.run import check_results_dir
    from raymeta.paths import check_output_dir

    checks.integer("--tasks", args.tasks, 1, MAX_TASKS)
    checks.integer("--population", args.population, 1, MAX_POPULATION)
    checks.integer("--steps-per-member", args.steps_per_member, 1, MAX_STEPS)
    checks.integer("--meta-steps", args.meta_steps, 1)
    checks.integer("--repeat", args.repeat, 1)
    checks.integer("--bare-repeats", args.bare_repeats, 1)
    if args.batch_units is not None:
        checks.integer("--batch-units", args.batch_units, 1)
    if args.out:
        check_output_dir(args.out, "--out")
        # its results-* datasets are refused inside a meta-checkpoint or a tune run, which
        # run_sweep found only after the meta-training had saved its checkpoint into it
        check_results_dir(Path(args.out), "--out")


def bare_rate(meta: Path, members: int, steps: int, threads: int, repeats: int = 1) -> float:
    """Member-steps/s of a bare ``vmap(grad)`` SGD population of ``members`` members of the
    checkpoint's first candidate, each full-batch on a held-out task's train split: the best
    of ``repeats`` timings (on a shared machine one timing is as often a neighbour's load as
    the ceiling)."""
    import torch
    from torch.func import functional_call, grad, vmap

    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.core.losses import per_example_loss
    from raymeta.core.models import build_model
    from raymeta.tasks import make_family

    ckpt = load_meta_checkpoint(meta)
    cand = ckpt.candidate()
    family = make_family(ckpt.family)
    tasks = [family.task("test", i) for i in range(min(members, 64))]
    pick = torch.arange(members) % len(tasks)
    x = torch.stack([t.x_train for t in tasks])[pick]
    y = torch.stack([t.y_train for t in tasks])[pick]
    model = build_model(cand.spec)
    names = [k for k, _ in model.named_parameters()]
    params = {
        k: cand.params[k].detach().unsqueeze(0).repeat(members, *[1] * cand.params[k].dim())
        for k in names
    }
    kind = tasks[0].kind

    def loss(p: dict[str, torch.Tensor], xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return per_example_loss(kind, functional_call(model, p, (xx,)), yy).mean()

    g = vmap(grad(loss))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g(params, x, y)  # warm-up (the first call imports and traces)
        wall = math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            for _ in range(steps):
                d = g(params, x, y)
                params = {k: v - 0.01 * d[k] for k, v in params.items()}
            wall = min(wall, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return members * steps / wall


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
    """Samples the summed RSS of this process and all its descendants at once and every 0.5 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # a first sample at once: a sweep shorter than one interval (the local one) has a peak
        while True:
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> _PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run(args: argparse.Namespace) -> int:
    from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
    from raymeta.core.train import MetaTrainConfig, meta_train
    from raymeta.errors import ConfigError
    from raymeta.fileio import atomic_write_json
    from raymeta.finetune import fit_priors
    from raymeta.results.render import render
    from raymeta.results.summary import notes, summarise, win_rates

    check_args(args)
    root = Path(args.out or tempfile.mkdtemp(prefix="raymeta-bench-sweep-"))
    meta = root / "meta"
    if (meta.exists() or meta.is_symlink()) and not (meta / "meta.json").is_file():
        # checked before the meta-training, which could not save into it afterwards
        raise ConfigError(
            f"--out {root}: {meta} exists but holds no meta-checkpoint (meta.json); "
            "remove it or choose another --out"
        )
    if not (meta / "meta.json").exists():
        t = time.perf_counter()
        tr = meta_train(MetaTrainConfig(steps=args.meta_steps, meta_batch=25, inner_steps=1))
        save_meta_checkpoint(meta, tr.to_checkpoint())
        write_priors(
            meta, fit_priors(load_meta_checkpoint(meta), n_tasks=32, n_configs=64).to_dict()
        )
        print(f"meta-checkpoint + priors in {time.perf_counter() - t:.1f}s")
    cfg = sweep_config(meta, args.tasks, args.population, args.steps_per_member)
    threads = os.cpu_count() or 1
    modes = [("ray sweep", False), ("local sweep", True)] if args.local else [("sweep", False)]
    records: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        timed = [(label, _time_sweep(cfg, root, local, args.batch_units)) for label, local in modes]
        table = timed[-1][1].pop("table")
        first = timed[0][1].pop("table") if len(timed) > 1 else table
        members = timed[-1][1]["members"]
        bare = bare_rate(meta, members, args.steps_per_member, threads, args.bare_repeats)
        same = _same_rows(first, table) if len(timed) > 1 else None
        for label, r in timed:
            rate = r["member_steps_per_s"]
            backend = "worker pool" if r["local"] else "Ray"
            print(
                f"[{rep + 1}/{args.repeat}] {label}: {r['units']} units ({args.tasks} tasks x "
                f"{len(STRATEGIES)} strategies, {r['members']} members) in {r['wall_s']:.1f}s = "
                f"{r['units_per_s']:.2f} units/s, {rate:,.0f} member-steps/s; "
                f"bare vmap(grad) SGD population of {r['members']} members ({threads} threads): "
                f"{bare:,.0f} member-steps/s; sweep/bare = {rate / bare:.1%}; "
                f"{backend} start {r['backend_start_s']:.1f}s and stop "
                f"{r['backend_stop_s']:.1f}s, without them "
                f"{r['started_member_steps_per_s']:,.0f} member-steps/s = "
                f"{r['started_member_steps_per_s'] / bare:.1%} of bare; "
                f"{r['parts']} part files; "
                f"peak RSS of the process tree {r['peak_rss'] / 2**30:.2f} GiB; "
                f"load average {r['load_before']:.2f} -> {r['load_after']:.2f}",
                flush=True,
            )
            records.append(
                {
                    "repeat": rep + 1,
                    "mode": label,
                    "tasks": args.tasks,
                    "strategies": len(STRATEGIES),
                    **r,
                    "bare_member_steps_per_s": bare,
                    "bare_threads": threads,
                    "sweep_over_bare": rate / bare,
                    "started_sweep_over_bare": r["started_member_steps_per_s"] / bare,
                    "same_rows_as_ray": same if label == "local sweep" else None,
                }
            )
        if same is not None:
            print(f"[{rep + 1}/{args.repeat}] local sweep rows == ray sweep rows: {same}")
    atomic_write_json(root / "bench-sweep.json", records)
    rows, wins = summarise(table), win_rates(table)
    print(render(rows, "markdown", wins=wins, notes=notes(rows, wins)))
    print(f"results: {records[-1]['results']}")
    print(f"figures: {root / 'bench-sweep.json'}")
    return 0


def sweep_config(
    meta: str | Path, tasks: int, population: int = 8, steps_per_member: int = 50
) -> SweepConfig:
    """The benchmark's sweep: ``STRATEGIES`` on ``tasks`` held-out tasks of ``meta``, units of
    ``population`` members, evaluations every tenth of the steps (also what the scripts in
    benchmarks/ time in-process)."""
    from raymeta.orchestration.sweep.config import parse_sweep

    return parse_sweep(
        {
            "name": "bench",
            "meta": [str(meta)],
            "strategies": STRATEGIES,
            "tasks": tasks,
            "population": population,
            "steps_per_member": steps_per_member,
            "interval": max(1, steps_per_member // 10),
        }
    )


def _time_sweep(cfg: Any, root: Path, local: bool, batch_units: int | None) -> dict[str, Any]:
    """One sweep into a fresh ``results-N`` folder of ``root``: its figures (member-steps
    counted from its rows, refits included) and its results table (key ``table``)."""
    from raymeta.orchestration.sweep.backends import local_slots
    from raymeta.orchestration.sweep.run import run_sweep
    from raymeta.results import read_results

    results = Path(tempfile.mkdtemp(dir=root, prefix="results-"))
    load = os.getloadavg()[0]
    with _PeakRSS() as mem:
        res = run_sweep(cfg, results, progress=False, batch_units=batch_units, local=local)
    table = read_results(results, sweep="bench")
    pdf = table.to_pandas()
    steps = int(pdf[pdf.metric == "test_loss"]["step"].sum())  # member-steps incl. refits
    vals = pdf[pdf.metric == "val_loss"]
    wall = max(res["wall_s"], 1e-9)
    return {
        "local": local,
        "slots": local_slots() if local else None,  # worker processes, at most
        "units": res["units"],
        "wall_s": res["wall_s"],
        "units_per_s": res["ran"] / wall,
        "member_steps": steps,
        "member_steps_per_s": steps / wall,
        "backend_start_s": res["start_s"],
        "backend_stop_s": res["stop_s"],
        # the sweep on a started backend: what a process running several sweeps on one Ray
        # (a cluster, a notebook) gets after its first
        "started_member_steps_per_s": steps / max(wall - res["start_s"] - res["stop_s"], 1e-9),
        "members": len(vals.drop_duplicates(["strategy", "task", "seed", "trial"])),
        "parts": len(list(results.glob("sweep=bench/part-*.parquet"))),
        "peak_rss": mem.peak,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "results": str(results),
        "table": table,
    }


def _same_rows(a: Any, b: Any) -> bool:
    """Two sweeps' results tables hold the same rows (values bit for bit; wall times aside)."""
    keys = ["strategy", "task", "seed", "trial", "step", "metric"]
    x, y = (t.to_pandas().drop(columns=["wall_s"]).sort_values(keys) for t in (a, b))
    return len(x) == len(y) and bool(
        (x[keys].to_numpy() == y[keys].to_numpy()).all()
        and x["value"].to_numpy().tobytes() == y["value"].to_numpy().tobytes()
    )
