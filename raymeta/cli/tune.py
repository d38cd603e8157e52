"""``raymeta tune``: tune one new task with a warm-started Ray Tune population."""

from __future__ import annotations

import argparse
import math
from typing import Any

from raymeta.cli._common import (
    add_command,
    address_arg,
    defer_required,
    float_arg,
    int_arg,
    path_arg,
)
from raymeta.finetune.strategy import INITS, PRIORS, SCHEDULERS
from raymeta.options import add_renamed
from raymeta.paths import output_arg

DESCRIPTION = """Fine-tune one new task with a Ray Tune population warm-started from a
meta-checkpoint: every member starts at the meta-learned initialization (or a seeded random
init with --init scratch) and takes its hyperparameters from the checkpoint's learned prior
(portfolio first, then prior samples; --prior broad = the broad space, --prior fixed-default =
one member with the default fine-tune). The population is T trials x M packed members (one
vmapped computation per trial). PBT (default) copies better trials' weights and optimizer state
and perturbs hyperparameters within the prior; pb2, asha and random use the same trainable. The
test split is evaluated once, for the best snapshot of any member."""

EPILOG = """TASK is FAMILY:INDEX (held-out meta-test task INDEX of the checkpoint's family,
e.g. sinusoid:17) or a Parquet file with one task (train/val/test splits; a missing val split is
carved from train and the report says so). Sizes, as in every raymeta command: the population
is the members (--trials x --members-per-trial); --budget is the total member-steps of the whole
population (default 100 per member) and a cap: each member trains budget // population steps,
reporting every --interval steps, and the run never spends more. A strategy (--strategy
INIT+PRIOR+SCHEDULER[+PICK], or --init/--prior/--scheduler) means what it means in raymeta
sweep; without one it is auto, the strategy `raymeta priors fit` chose from meta-val evidence
(meta+learned+pbt for priors fitted before selection existed, meta+broad+pbt without priors).
Outputs in --out: best_model.pt (weights only), report.json, results/ (Parquet rows),
history.jsonl, and Ray Tune's experiment in ray_results/NAME (per-trial result.json,
progress.csv, TensorBoard events: ExperimentAnalysis and `tensorboard --logdir` read it).
Rerunning the same command with the same --out resumes an interrupted run; a crashed trial
is retried up to --max-failures times from its last checkpoint. --population
(deprecated) is the old name of --trials."""


MAX_TRIALS = 100_000  # Tune trials of one run
MAX_MEMBERS = 1 << 20  # members packed into one trial


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "tune",
        "tune a new task with a warm-started Ray Tune population (PBT)",
        _run,
        DESCRIPTION,
    )
    p.epilog = EPILOG
    p.add_argument(
        "--meta",
        type=path_arg,
        default=None,
        required=True,
        help="meta-checkpoint directory (required)",
    )
    p.add_argument(
        "--task",
        default=None,
        required=True,
        help="FAMILY:INDEX (a held-out task of the checkpoint's family, e.g. sinusoid:7 or "
        "mypkg.tasks:Waves:7), parquet:TASK_ID, or a one-task Parquet file (required)",
    )
    p.add_argument(
        "--task-option",
        action="append",
        dest="task_options",
        metavar="KEY=VALUE",
        help="override a split size of a FAMILY:INDEX task (task_shots, val_size, test_size; "
        "repeatable), e.g. val_size=50",
    )
    p.add_argument(
        "--trials",
        type=int_arg(1, MAX_TRIALS),
        default=None,
        required=True,
        help="number of Ray Tune trials T (required)",
    )
    add_renamed(p, "--population", "--trials", type=int_arg(1, MAX_TRIALS))
    p.add_argument(
        "--members-per-trial",
        type=int_arg(1, MAX_MEMBERS),
        default=1,
        help="M members packed into one vmapped trial",
    )
    p.add_argument(
        "--strategy",
        default=None,
        metavar="auto|INIT+PRIOR+SCHEDULER[+PICK]",
        help="the strategy at once, as in raymeta sweep (e.g. meta+learned+pbt, "
        "scratch+broad+random, meta+fixed-default+refit), or give --init, --prior, --scheduler. "
        "Default auto: what 'raymeta priors fit' chose for this family on meta-val tasks (see "
        "'raymeta priors show'); the report says which ran and why. PICK is the final model: "
        "best (default: the lowest-val snapshot), refit (its config retrained on train+val) or "
        "soup (the average of the best members' weights)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        choices=list(SCHEDULERS),
        help="Tune scheduler (default: pbt)",
    )
    p.add_argument(
        "--budget",
        type=int_arg(1),
        default=None,
        help="total member-steps of the population, a cap (default: 100 per member)",
    )
    p.add_argument(
        "--interval",
        type=int_arg(1),
        default=None,
        help="steps between reports/perturbations, at most a member's steps (budget // "
        "population; default: a quarter of them)",
    )
    p.add_argument(
        "--init",
        default=None,
        choices=list(INITS),
        help="meta-learned init or seeded random init (default: meta)",
    )
    p.add_argument(
        "--prior",
        default=None,
        choices=list(PRIORS),
        help="where hyperparameters come from (default: learned)",
    )
    p.add_argument(
        "--address",
        type=address_arg,
        default=None,
        help="join this Ray cluster (HOST:PORT of its head, or auto; the Ray Client's ray:// is not supported)",
    )
    p.add_argument(
        "--storage",
        type=path_arg,
        default=None,
        help="Tune storage_path (local path or s3://, gs:// URI; default: OUT/ray_results)",
    )
    p.add_argument(
        "--out",
        type=output_arg("--out"),
        default=None,
        required=True,
        help="output directory (required)",
    )
    p.add_argument(
        "--seed",
        type=int_arg(0),
        default=0,
        help="seed of member inits, prior draws and minibatches",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="reproducible run: the same command (same --seed) into a fresh --out repeats the "
        "run exactly (best config, val and test loss, model, every exploit). pbt and pb2 decide "
        "synchronously: every trial pauses at each report until all have reported it, then "
        "exploits go in a fixed order (about the same wall time on a small run, slower when "
        "trials run at different speeds: each round waits for the slowest); asha runs one "
        "trial at a time (no two in parallel); random is reproducible without the flag. Not "
        "covered: a scheduler object from Python, GPU trials (CUDA kernels need not be "
        "bitwise reproducible), a trial retried after a crash, a resumed run",
    )
    p.add_argument(
        "--max-failures",
        type=int_arg(0),
        default=2,
        help="retries of a crashed trial from its last checkpoint",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float_arg(0.0, low_open=True),
        default=1.0,
        help="CPUs reserved per trial",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float_arg(0.0),
        default=0.0,
        help="GPUs per trial (fractions share a GPU); > 0 trains the packed members on CUDA",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the run's name: the Ray Tune experiment directory (STORAGE/NAME, default "
        "OUT/ray_results/tune-<hash of OUT>) and the results' sweep label (default: tune); "
        "a resume must give the same name",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    defer_required(p)  # --meta, --task, --trials (or --population), --out may come from --config


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def summary(report: dict[str, Any]) -> str:
    """The final table: one line per trial, then the best member and its test metrics."""
    lines = [f"{'trial':<14} {'reports':>7} {'best val':>10}  error"]
    for t in sorted(
        report["trials"], key=lambda t: (t["best_val_loss"] is None, t["best_val_loss"] or 0.0)
    ):
        lines.append(
            f"{t['trial']:<14} {t['reports']:>7} {_fmt(t['best_val_loss']):>10}  {t['error'] or ''}"
        )
    b = report["best"]
    tests = "  ".join(f"{k}={_fmt(v)}" for k, v in b.items() if k.startswith("test_"))
    cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in b["config"].items())
    lines += [
        f"best: trial {b['trial']} member {b['member']}"
        + (f" (candidate {report['candidate']})" if report.get("candidate") else "")
        + f"  val_loss={_fmt(b['val_loss'])}  {tests}",
        f"      {cfg}",
        f"strategy {report['strategy']}  population {report['population']}  member-steps "
        f"{report['member_steps']} of {report['budget']}  exploits "
        f"{sum(1 for e in report['lineage'] if e['kind'] == 'exploit')}  wall {report['wall_s']:.1f}s",
    ]
    if report.get("strategy_why"):
        lines.append(f"why: {report['strategy_why']}")
    pick = report.get("pick") or {}
    if pick.get("rule") not in (None, "best"):
        lines.append(
            f"final pick {pick['rule']}"
            + (f" of {pick['members']} members" if pick.get("members", 1) > 1 else "")
            + (f" ({pick['extra_steps']} refit steps)" if pick.get("extra_steps") else "")
            + (
                ": the refit fitted train+val worse than the snapshot, kept the snapshot"
                if pick.get("fallback")
                else ""
            )
        )
    for note in report.get("task_notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from raymeta.options import parse_options
    from raymeta.orchestration.tune.request import TuneRequest
    from raymeta.orchestration.tune.run import run_tune

    request = TuneRequest(
        meta=args.meta,
        task=str(args.task),
        trials=int(args.trials),
        members_per_trial=int(args.members_per_trial),
        strategy=args.strategy,
        init=args.init,
        prior=args.prior,
        scheduler=args.scheduler,
        budget=args.budget,
        address=args.address,
        storage=args.storage,
        out=args.out,
        seed=int(args.seed),
        interval=args.interval,
        max_failures=int(args.max_failures),
        cpus_per_trial=float(args.cpus_per_trial),
        gpus_per_trial=float(args.gpus_per_trial),
        task_options=parse_options(args.task_options, "task"),
        deterministic=bool(args.deterministic),
        name=args.name,
    )
    report = run_tune(request, verbose=0 if args.quiet else 1)
    print(summary(report))
    print(f"wrote {args.out}/report.json, {args.out}/best_model.pt, {args.out}/results/")
    return 0
