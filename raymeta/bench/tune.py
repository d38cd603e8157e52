"""``raymeta bench tune``: (a) packing throughput, (b) time to quality of warm-started tuning.

(a) member-steps/s of a T x M = 64-member population, packed (T=4 trials, M=16 members each)
    vs one member per trial (T=64, M=1), both through ``run_tune`` in one Ray session: whole-run rate (start-up
    included) and steady-state rate inside trials. Target: >= 10x.
(b) on N held-out tasks, ``meta+learned+pbt`` vs ``scratch+broad+pbt`` with the same
    population and budget: the member-steps the warm-started population needs to reach the
    scratch run's final best validation loss (target <= 1/10 of the budget) and how often its
    final test loss is lower (target >= 90% of tasks).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from math import inf
from pathlib import Path
from statistics import median
from typing import Any

from raymeta import checks
from raymeta.options import add_renamed, int_arg

PACKING_MEMBERS = 64  # (a)'s population: 4 trials x 16 members, or 64 x 1
HELP = "tune: packed vs one-member trials, and time to quality of warm-started PBT"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--meta",
        default=None,
        help="meta-checkpoint with priors (default: build a small sinusoid one)",
    )
    p.add_argument(
        "--family",
        default="sinusoid",
        choices=["sinusoid", "digits"],
        help="family of the default checkpoint",
    )
    p.add_argument(
        "--tasks", type=int_arg(0), default=3, help="held-out tasks for (b); 0 skips (b)"
    )
    p.add_argument("--trials", type=int_arg(1), default=4, help="Ray Tune trials for (b)")
    add_renamed(p, "--population", "--trials", type=int_arg(1))
    p.add_argument(
        "--members-per-trial", type=int_arg(1), default=4, help="packed members per trial for (b)"
    )
    p.add_argument(
        "--steps-per-member", type=int_arg(1), default=100, help="steps per member for (b)"
    )
    add_renamed(p, "--steps", "--steps-per-member", type=int_arg(1))
    p.add_argument(
        "--packing-steps",
        # (a)'s budget is 64 members x these steps: bounded so it fits a tune budget (an int64),
        # which was refused only after the default checkpoint was meta-trained
        type=int_arg(0, checks.MAX_INT // PACKING_MEMBERS),
        default=1000,
        help="steps per member for (a); 0 skips (a)",
    )
    p.add_argument(
        "--meta-steps",
        type=int_arg(1),
        default=500,
        help="meta-training steps of the default checkpoint",
    )
    p.add_argument(
        "--task-option",
        action="append",
        dest="task_options",
        metavar="KEY=VALUE",
        help="split size override for the held-out tasks of (b), as in raymeta tune",
    )


def _default_options(family: str) -> dict[str, Any]:
    """The family options of the default checkpoint."""
    return {} if family == "sinusoid" else {"ways": 5, "shots": 1}


def _default_meta(family: str, steps: int, member_steps: int, where: Path) -> Path:
    """A small meta-checkpoint whose priors are fitted for ``member_steps``-step members."""
    from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, meta_train
    from raymeta.finetune import fit_priors, write_priors

    path = where / f"{family}-meta"
    tr = meta_train(
        MetaTrainConfig(
            family=family,
            family_options=_default_options(family),
            steps=steps,
            meta_batch=16,
            val_tasks=10,
        )
    )
    save_meta_checkpoint(path, tr.to_checkpoint())
    write_priors(
        path,
        fit_priors(
            load_meta_checkpoint(path),
            n_tasks=8,
            n_configs=32,
            max_steps=member_steps,
            objective="anytime",
        ).to_dict(),
    )
    return path


def packing(meta: Path, family: str, steps: int, work: Path) -> dict[str, float]:
    """Member-steps/s of 64 members packed 4x16 vs 64x1, FIFO (no exploits), 4 reports each.

    Two rates per layout: the whole tune run (start-up, actor starts and checkpoints included)
    and the steady state inside trials: member-steps over the time spent training and
    evaluating, without each trial's first report (the first vmapped call in a process costs
    seconds). Both layouts run the same number of concurrent trials (1 CPU each).

    ``"<layout> start-up"``: seconds from the ``run_tune`` call to the first trial step (the
    start of the first reported interval: trial actors started, their imports done, the trial
    set up), the fixed cost the whole-run rate pays; the second layout runs in the Ray session
    the first started, so its start-up holds no Ray start."""
    from raymeta.orchestration.tune.request import TuneRequest
    from raymeta.orchestration.tune.run import run_tune

    out: dict[str, float] = {}
    for p, m in ((4, 16), (64, 1)):
        t0, wall0 = time.perf_counter(), time.time()
        req = TuneRequest(
            meta,
            f"{family}:0",
            trials=p,
            members_per_trial=m,
            strategy="meta+broad+random",
            budget=PACKING_MEMBERS * steps,
            out=work / f"pack-{p}x{m}",
            interval=max(1, steps // 4),
        )
        rep = run_tune(req, verbose=0)
        out[f"{p}x{m}"] = rep["member_steps"] / (time.perf_counter() - t0)
        recs = [
            json.loads(line)
            for line in (work / f"pack-{p}x{m}" / "history.jsonl").read_text().splitlines()
            if line
        ]
        out[f"{p}x{m} start-up"] = (
            min(float(r["wall_time"]) - float(r["interval_s"]) for r in recs) - wall0
        )
        steady = [r for r in recs if int(r["trial_step"]) > max(1, steps // 4)]
        busy = sum(float(r["interval_s"]) for r in steady)
        out[f"{p}x{m} steady"] = sum(int(r["interval_member_steps"]) for r in steady) / max(
            busy, 1e-9
        )
    return out


def quality(
    meta: Path,
    family: str,
    n: int,
    pop: int,
    m: int,
    steps: int,
    work: Path,
    task_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    from raymeta.orchestration.tune.lineage import steps_to_reach
    from raymeta.orchestration.tune.request import TuneRequest
    from raymeta.orchestration.tune.run import run_tune

    rows = []
    for i in range(n):
        reps = {}
        for init, prior in (("meta", "learned"), ("scratch", "broad")):
            req = TuneRequest(
                meta,
                f"{family}:{i}",
                trials=pop,
                members_per_trial=m,
                strategy=f"{init}+{prior}+pbt",
                budget=pop * m * steps,
                out=work / f"q{i}-{init}",
                interval=max(1, steps // 20),
                task_options=task_options or {},
            )
            reps[init] = run_tune(req, verbose=0)
        target = min(v for _, v in reps["scratch"]["curve"])
        need = steps_to_reach([tuple(c) for c in reps["meta"]["curve"]], target)  # type: ignore[misc]
        rows.append(
            {
                "task": reps["meta"]["task"],
                "scratch_val": target,
                "meta_val": reps["meta"]["best"]["val_loss"],
                "fraction": None if need is None else need / reps["scratch"]["member_steps"],
                "meta_test": reps["meta"]["best"]["test_loss"],
                "scratch_test": reps["scratch"]["best"]["test_loss"],
            }
        )
    return rows


def check_args(args: argparse.Namespace, task_options: dict[str, Any]) -> None:
    """(b)'s tune request built once with the flags before anything runs: its limits (trials x
    members, budget, task options) were otherwise checked only after the default checkpoint
    was meta-trained and (a) had run. A given ``--meta`` is loaded (checked) before Ray starts,
    must be of ``--family``, and (b)'s last task is planned from it (priors present, task
    index and ``--task-option`` values valid); without one, the task options are checked
    against the family the default checkpoint is trained on."""
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.errors import ConfigError
    from raymeta.orchestration.tune.plan import plan_tune
    from raymeta.orchestration.tune.request import TuneRequest
    from raymeta.tasks.base import FamilySpec
    from raymeta.tasks.registry import make_family, resize_splits

    if args.meta:
        trained_on = load_meta_checkpoint(args.meta).family.name
        if trained_on != args.family:
            raise ConfigError(
                f"--meta {args.meta} was meta-trained on family {trained_on!r}, not --family "
                f"{args.family!r} (give --family {trained_on})"
            )
    if args.tasks > 0:
        request = TuneRequest(
            args.meta or "meta",
            f"{args.family}:{args.tasks - 1}",
            trials=args.trials,
            members_per_trial=args.members_per_trial,
            strategy="meta+learned+pbt",
            budget=args.trials * args.members_per_trial * args.steps_per_member,
            interval=max(1, args.steps_per_member // 20),
            task_options=task_options,
        )
        if args.meta:
            plan_tune(request)  # loads, resolves the task and the prior; writes nothing
        elif task_options:
            spec = FamilySpec(args.family, _default_options(args.family))
            make_family(resize_splits(spec, task_options)).task("test", args.tasks - 1)


def run(args: argparse.Namespace) -> int:
    from raymeta.options import parse_options
    from raymeta.orchestration.ray_runtime import ray_context

    task_options = parse_options(args.task_options, "task")
    check_args(args, task_options)
    # one Ray session for every run below (``run_tune`` reuses it), without idle prestarted
    # workers that Tune's trial actors cannot use
    with (
        tempfile.TemporaryDirectory(prefix="raymeta-bench-tune-") as d,
        ray_context(None, prestart_workers=False),
    ):
        work = Path(d)
        meta = (
            Path(args.meta)
            if args.meta
            else _default_meta(args.family, args.meta_steps, args.steps_per_member, work)
        )
        if args.packing_steps > 0:
            r = packing(meta, args.family, args.packing_steps, work)
            print(f"(a) packing, 64 members x {args.packing_steps} steps, member-steps/s")
            for what, sfx in (("whole tune run", ""), ("steady state in a trial", " steady")):
                a, b = r["4x16" + sfx], r["64x1" + sfx]
                print(
                    f"    {what:<24} packed 4x16: {a:8.0f}   one per trial 64x1: {b:8.0f}   speed-up {a / b:.1f}x (target >= 10x)"
                )
            a, b = r["4x16 start-up"], r["64x1 start-up"]
            print(
                f"    {'start-up to 1st step, s':<24} packed 4x16: {a:8.1f}   one per trial 64x1: {b:8.1f}   (run 1 / run 2 of one Ray session)"
            )
        if args.tasks > 0:
            rows = quality(
                meta,
                args.family,
                args.tasks,
                args.trials,
                args.members_per_trial,
                args.steps_per_member,
                work,
                task_options,
            )
            print(
                f"(b) time to quality, {args.trials}x{args.members_per_trial} members, {args.steps_per_member} steps each, PBT"
            )
            print(
                f"    {'task':<22} {'scratch val':>11} {'meta val':>9} {'steps frac':>10} {'meta test':>9} {'scratch test':>12}"
            )
            for r in rows:
                frac = "never" if r["fraction"] is None else f"{r['fraction']:.3f}"
                print(
                    f"    {r['task']:<22} {r['scratch_val']:>11.4f} {r['meta_val']:>9.4f} {frac:>10} {r['meta_test']:>9.4f} {r['scratch_test']:>12.4f}"
                )
            fr = [inf if r["fraction"] is None else r["fraction"] for r in rows]
            wins = sum(r["meta_test"] < r["scratch_test"] for r in rows)
            print(
                f"    median fraction {median(fr):.3f} (target <= 0.1); reached within 1/10 of the steps: "
                f"{sum(f <= 0.1 for f in fr)}/{len(rows)};  lower test loss: {wins}/{len(rows)} (target >= 90%)"
            )
    return 0
