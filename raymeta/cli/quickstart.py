"""``raymeta quickstart``: the whole pipeline on the embedded local Ray in a few minutes.

1. meta-train MAML on sinusoid with 2 Ray Train workers,
2. fit hyperparameter priors on meta-validation tasks,
3. tune 3 held-out tasks with a small PBT population warm-started from the meta-init and the
   learned prior, and the same tasks from scratch with the broad prior,
4. print the comparison (test MSE, member-steps and wall time to the scratch run's quality).

Every stage is resumable: rerunning the command reuses what a previous run finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import time
from pathlib import Path
from typing import Any

from raymeta.cli._common import add_command, address_arg, int_arg
from raymeta.options import add_renamed
from raymeta.paths import output_arg

STRATEGIES = (("meta", "learned"), ("scratch", "broad"))
LABEL = "quickstart"  # the tune runs' sweep label: what 'raymeta report' groups them by
# the sizes a flag (or --config) does not give; --smoke-test swaps in SMOKE for those only
DEFAULTS = {"steps": 1500, "tasks": 3, "trials": 4, "budget": 400}
SMOKE = {"steps": 40, "tasks": 1, "trials": 2, "budget": 40}


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "quickstart",
        "run the whole pipeline end to end on the embedded local Ray",
        _run,
        __doc__,
    )
    p.add_argument(
        "--out",
        type=output_arg("--out"),
        default="runs/quickstart",
        help="working directory for every artifact",
    )
    p.add_argument(
        "--steps",
        type=int_arg(1, 10_000_000),
        default=None,
        help=f"meta-training outer steps {_preset('steps')}",
    )
    p.add_argument("--workers", type=int_arg(1, 1024), default=2, help="Ray Train workers")
    p.add_argument(
        "--tasks",
        type=int_arg(1, 10_000),
        default=None,
        help=f"held-out tasks to tune {_preset('tasks')}",
    )
    p.add_argument(
        "--trials",
        type=int_arg(1, 100_000),
        default=None,
        help=f"PBT trials per task {_preset('trials')}",
    )
    add_renamed(p, "--population", "--trials", type=int_arg(1, 100_000))
    p.add_argument(
        "--budget",
        type=int_arg(1),
        default=None,
        help="total member-steps per tuning run, a cap (each member trains budget // trials) "
        + _preset("budget"),
    )
    p.add_argument(
        "--address",
        type=address_arg,
        default=None,
        help="join this Ray cluster (default: embedded local Ray)",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny sizes (for CI): finishes in about a minute; a preset for each of --steps, "
        "--tasks, --trials and --budget not given (flags and --config win over it)",
    )


def _preset(name: str) -> str:
    return f"(default: {DEFAULTS[name]}; with --smoke-test: {SMOKE[name]})"


def resolve_sizes(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``--steps``, ``--tasks``, ``--trials`` and ``--budget`` where not given (``None``:
    neither a flag nor ``--config`` set it) from ``SMOKE`` under ``--smoke-test``, else from
    ``DEFAULTS``: an explicit size always wins over the smoke-test preset. Then the sizes must
    fit together (one step per trial at least). Pure: no file, no Ray."""
    from raymeta.errors import ConfigError

    presets = SMOKE if args.smoke_test else DEFAULTS
    preset: set[str] = set()
    for name, value in presets.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
            preset.add(name)
    for name in ("steps", "workers", "tasks", "trials", "budget"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1")
    if args.budget < args.trials:
        where = ""
        if "budget" in preset:
            where = " (the --smoke-test preset)" if args.smoke_test else " (the default)"
        raise ConfigError(
            f"--budget {args.budget}{where} gives the {args.trials} trials less than one step "
            "each: give --budget >= --trials"
        )
    return args


def _requests(args: argparse.Namespace, out: Path) -> list[Any]:
    """The ``TuneRequest`` of every tune run of stage 3, in the order they run."""
    from raymeta.orchestration.tune.request import TuneRequest

    return [
        TuneRequest(
            out / "meta",
            f"sinusoid:{i}",
            trials=args.trials,
            budget=args.budget,
            init=init,
            prior=prior,
            out=out / "tune" / f"task{i}-{init}-{prior}",
            seed=i,
            label=LABEL,
        )
        for i in range(args.tasks)
        for init, prior in STRATEGIES
    ]


def _preflight(out: Path, meta: Path, requests: list[Any]) -> None:
    """Before Ray starts: ``--out`` must be a writable directory (or creatable), a
    meta-checkpoint left by an earlier run must load (it is reused, not retrained), and every
    tune run's folder must be writable and new, empty or this same run (a rerun resumes it):
    otherwise stage 3 would refuse it after minutes of meta-training."""
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.errors import ConfigError
    from raymeta.orchestration.tune.run import check_run_record
    from raymeta.paths import probe_writable

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    probe_writable(out / "x" if out.is_dir() else out)
    if (meta / "meta.json").exists() or (meta.exists() and not meta.is_dir()):
        load_meta_checkpoint(meta)
    for request in requests:
        request.check_paths()
        check_run_record(Path(request.out), request.fingerprint())


def _stage(msg: str) -> float:
    print(f"\n== {msg}", flush=True)
    return time.perf_counter()


def _run(args: argparse.Namespace) -> int:
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig
    from raymeta.finetune import fit_priors, write_priors
    from raymeta.orchestration.meta_train.ray_train import run_meta_train
    from raymeta.orchestration.ray_runtime import check_resources_before_start, ray_context
    from raymeta.orchestration.tune.run import run_tune
    from raymeta.results import report as results_report
    from raymeta.results.discover import find_datasets

    resolve_sizes(args)
    out = Path(args.out)
    meta = out / "meta"
    requests = _requests(args, out)
    _preflight(out, meta, requests)
    if not (meta / "meta.json").exists():  # the embedded Ray's CPUs hold the workers
        check_resources_before_start(
            args.address, args.workers, what=f"meta-train with {args.workers} worker(s)"
        )
    t_all = time.perf_counter()
    with ray_context(args.address):
        t = _stage(
            f"1/4 meta-training MAML on sinusoid with {args.workers} Ray Train workers -> {meta}"
        )
        cfg = MetaTrainConfig(
            family="sinusoid",
            algo="maml",
            inner_steps=1,
            inner_lr=0.01,
            steps=args.steps,
            meta_batch=max(25, args.workers),
            val_every=max(1, args.steps // 5),
        )
        if not (meta / "meta.json").exists():
            run_meta_train(
                cfg,
                meta,
                workers=args.workers,
                address=args.address,
                checkpoint_every=max(1, args.steps // 5),
            )
        else:
            print(f"reusing {meta}")
        print(f"   done in {time.perf_counter() - t:.1f}s")

        t = _stage("2/4 fitting fine-tuning priors on meta-validation tasks")
        ckpt = load_meta_checkpoint(meta)
        if ckpt.priors is None:
            small = args.smoke_test
            priors = fit_priors(
                ckpt,
                n_tasks=8 if small else 16,
                n_configs=16 if small else 32,
                select_tasks=2 if small else None,  # the strategy selection behind tune's auto
                max_steps=args.budget // args.trials,  # the tune runs' steps per member
            )
            write_priors(meta, priors.to_dict())
        else:
            print("reusing priors.json")
        print(f"   done in {time.perf_counter() - t:.1f}s")

        t = _stage(
            f"3/4 tuning {args.tasks} held-out tasks: PBT x{args.trials}, meta+learned vs scratch+broad"
        )
        runs: list[Path] = []
        for request in requests:
            report: dict[str, Any] = run_tune(request, verbose=0)
            best = report["best"]
            print(
                f"   {request.task:<12} {request.init}+{request.prior}+pbt  test MSE {best['test_loss']:.4f}  ({report.get('wall_s', 0):.1f}s)",
                flush=True,
            )
            runs.append(Path(request.out))
        print(f"   done in {time.perf_counter() - t:.1f}s")

    _stage("4/4 comparison (target = the scratch run's final best validation loss on each task)")
    # the table 'raymeta report' gives over the same runs, so the hint below reproduces it
    print(results_report(runs, sweep=LABEL).text)
    print(f"\nquickstart finished in {time.perf_counter() - t_all:.0f}s; artifacts in {out}/")
    tune_dir = out / "tune"
    found = {d.root.resolve() for d in find_datasets(tune_dir)}
    # the directory only when it holds no other runs (say of an earlier, larger quickstart)
    same = found == {(r / "results").resolve() for r in runs}
    where = shlex.quote(str(tune_dir)) if same else " ".join(shlex.quote(str(r)) for r in runs)
    # --plots only where matplotlib is installed (the 'plots' extra): a hint must run as printed
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    plots = f" --plots {shlex.quote(str(out / 'plots'))}" if has_mpl else ""
    print(
        f"next: raymeta priors show --meta {shlex.quote(str(meta))}; "
        f"raymeta report {where} --sweep {LABEL}{plots}"
    )
    return 0
