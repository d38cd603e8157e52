"""``raymeta priors fit|show``: learn fine-tuning priors from meta-val tasks, or print them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raymeta.cli._common import (
    add_command,
    address_arg,
    defer_required,
    float_arg,
    int_arg,
    path_arg,
)

FIT_DESCRIPTION = """Fine-tune C configurations from the broad search space on N meta-validation
tasks, starting from the meta-initialization (all configs of one model candidate train as ONE
vmapped population), then fit per-hyperparameter priors to each task's top quantile (shrunk toward
the broad space by a pseudo-count; learning rate, weight decay, steps and batch size get a
sub-prior per optimizer), a greedy portfolio minimising mean normalised regret, and model-selection
probabilities. The result is written as a checksummed priors.json inside the meta-checkpoint.

Then it chooses the STRATEGY new tasks of the family should run (what `raymeta tune` runs by
default, `--strategy auto`): on --select-tasks further meta-val tasks it runs, as whole
populations, the fixed default fine-tune of every candidate, a learned-prior and a broad PBT
population from the meta-init and a broad PBT population from scratch, and scores every final
pick (best: the lowest-val snapshot; refit: its config retrained on train+val; soup: the average
of the best members) on those tasks' TEST splits, which nothing in the runs saw. Among the arms
within 5% of the lowest mean test loss the best mean rank wins; priors.json records the whole
table and why, and `raymeta priors show` prints it.

Fitting priors for `raymeta tune`? Its members train the run's whole budget and keep their best
snapshot, so use --objective anytime --max-steps <the run's steps per member>: every config then
trains that long and is ranked by how soon and how far its val loss drops, not by its loss after
its own `steps`."""


MAX_STEPS = 1_000_000  # fine-tuning steps per config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "priors", help="fit or show meta-learned fine-tuning priors", description=__doc__
    )
    inner = p.add_subparsers(dest="priors_command", metavar="ACTION")
    f = add_command(
        inner,
        "fit",
        "fit priors on meta-val tasks and store them in the meta-checkpoint",
        _fit,
        FIT_DESCRIPTION,
    )
    f.add_argument(
        "--meta",
        type=path_arg,
        default=None,
        required=True,
        help="meta-checkpoint directory (required)",
    )
    f.add_argument(
        "--tasks", type=int_arg(2, 4096), default=32, help="meta-val tasks to fine-tune on"
    )
    f.add_argument(
        "--configs", type=int_arg(4), default=64, help="configs sampled from the broad space"
    )
    f.add_argument(
        "--seed",
        type=int_arg(0),
        default=0,
        help="seed of the config sample and of minibatch draws",
    )
    f.add_argument(
        "--quantile",
        type=float_arg(0.0, 1.0, low_open=True),
        default=0.05,
        help="top fraction of each task's configs the priors fit (at least 2 per task)",
    )
    f.add_argument(
        "--shrink",
        type=float_arg(0.0, low_open=True),
        default=0.5,
        help="pseudo-count of broad-space evidence: numeric priors keep shrink/(tasks+shrink) uniform",
    )
    f.add_argument(
        "--rounds",
        type=int_arg(1),
        default=2,
        help="config batches: the first from the broad space, later ones from the prior fitted so far",
    )
    f.add_argument("--portfolio", type=int_arg(1), default=8, help="portfolio size K")
    f.add_argument(
        "--refine-repeats",
        type=int_arg(0),
        default=2,
        help="fresh-seed re-runs of every config that the portfolio and joint weights are chosen on",
    )
    f.add_argument(
        "--safe-rate",
        type=float_arg(0.0, 1.0),
        default=0.9,
        help="portfolio #1 must improve on the meta-init on this share of meta-val tasks (0 = off)",
    )
    f.add_argument(
        "--max-steps",
        type=int_arg(1, MAX_STEPS),
        default=100,
        help="longest fine-tuning run in the space (for raymeta tune: its steps per member)",
    )
    f.add_argument(
        "--objective",
        choices=["final", "anytime"],
        default="final",
        help="final: rank configs by val loss after their own steps (one fine-tune run); "
        "anytime: every config trains --max-steps and is ranked by its best val loss so far, "
        "averaged over those steps (fit for raymeta tune; set --max-steps to the run's steps "
        "per member)",
    )
    f.add_argument(
        "--no-anchors",
        dest="anchors",
        action="store_false",
        help="draw the whole first round from the broad space (default: it opens with the "
        "standard fine-tunes, SGD at the meta-training inner lr and Adam at 1e-3/3e-3/1e-2, so "
        "the portfolio holds the default fine-tune when it is good on meta-val)",
    )
    f.add_argument(
        "--select-tasks",
        type=int_arg(0, 4096),
        default=None,
        help="meta-val tasks (after the --tasks ones, where the family has them) the strategies "
        "run on to choose tune's default strategy (default: half of --tasks, 2 to 16); 0 = no "
        "selection (tune's auto then runs meta+learned+pbt)",
    )
    f.add_argument(
        "--select-population",
        type=int_arg(1, 4096),
        default=8,
        help="members of each population strategy during selection (tune's trials x members)",
    )
    f.add_argument(
        "--select-interval",
        type=int_arg(1, MAX_STEPS),
        default=None,
        help="steps between evaluations during selection, at most --max-steps (default: a "
        "quarter of --max-steps, as tune reports)",
    )
    f.add_argument(
        "--memory-budget",
        type=_size_arg,
        default=None,
        help="memory the fine-tuning chunks may use, e.g. 512MB, 4GB or 4GiB; chunks hold as "
        "many members as fit it (default: 40%% of the memory available when the fit starts, at "
        "most 2GiB on cpu, where larger chunks are no faster; of the free GPU memory on cuda)",
    )
    f.add_argument(
        "--chunk-size",
        type=int_arg(1),
        default=None,
        help="members per vmapped chunk (default: as many as fit --memory-budget)",
    )
    f.add_argument(
        "--device",
        default=None,
        help="where the fine-tuning populations train: cpu, or cuda[:N] on a GPU machine "
        "(default: cuda with --gpus > 0, else cpu)",
    )
    f.add_argument(
        "--address",
        type=address_arg,
        default=None,
        help="run the fit as a Ray task on this cluster (HOST:PORT or auto), holding --cpus "
        "CPUs and --gpus GPUs there (e.g. a worker pod, not the RayJob's head); the driver "
        "writes the priors. Default: fit here, without Ray",
    )
    f.add_argument(
        "--cpus",
        type=float_arg(0.0, low_open=True),
        default=None,
        help="CPUs the fit's Ray task reserves (and its torch threads), with --address (default 1)",
    )
    f.add_argument(
        "--gpus",
        type=float_arg(0.0),
        default=None,
        help="GPUs the fit's Ray task reserves, with --address (default 0; > 0 trains on cuda)",
    )
    f.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s = add_command(
        inner,
        "show",
        "print a meta-checkpoint's priors as a table",
        _show,
        "Print a meta-checkpoint's priors: each hyperparameter's broad space next to its learned "
        "prior, the conditional sub-priors, the joint part, the portfolio, and the model "
        "candidates. With several candidates (meta-train --candidate) the last table says what "
        "each is (model, how it was trained: an algorithm, pretrain or pretrained weights, its "
        "meta-validation loss) and P(best): the add-one smoothed share of meta-val tasks on "
        "which its best config beat the other candidates' best. Tune and sweep populations "
        "draw each member's candidate (the 'model' hyperparameter) from that prior.",
    )
    s.add_argument(
        "--meta",
        type=path_arg,
        default=None,
        required=True,
        help="meta-checkpoint directory (required)",
    )
    defer_required(f)  # --meta may come from --config
    defer_required(s)
    p.set_defaults(func=_usage)


def _usage(args: argparse.Namespace) -> int:
    from raymeta.errors import ConfigError

    raise ConfigError("priors needs an action: fit or show (see raymeta priors --help)")


def _meta(args: argparse.Namespace) -> str:
    """``--meta`` (given: ``check_required`` ran before the command)."""
    return str(args.meta)


def _fit(args: argparse.Namespace) -> int:
    from raymeta.core.checkpoint import load_meta_checkpoint, priors_file
    from raymeta.errors import ConfigError
    from raymeta.finetune.fit import PriorFitConfig, fit_priors
    from raymeta.finetune.priors_file import write_priors
    from raymeta.priors.show import format_priors
    from raymeta.progress import Progress

    path = _meta(args)
    for flag in ("cpus", "gpus"):
        if getattr(args, flag) is not None and args.address is None:
            raise ConfigError(f"--{flag} sizes the fit's Ray task: give --address too")
    cpus = 1.0 if args.cpus is None else float(args.cpus)
    gpus = 0.0 if args.gpus is None else float(args.gpus)
    device = args.device or ("cuda" if gpus > 0 else "cpu")
    ckpt = load_meta_checkpoint(path)
    check_priors_writable(path)
    config = PriorFitConfig(
        n_tasks=args.tasks,
        n_configs=args.configs,
        seed=args.seed,
        quantile=args.quantile,
        portfolio_size=args.portfolio,
        max_steps=args.max_steps,
        chunk_size=args.chunk_size,
        memory_budget=args.memory_budget,
        rounds=args.rounds,
        shrink=args.shrink,
        refine_repeats=args.refine_repeats,
        safe_rate=args.safe_rate if args.safe_rate > 0 else None,
        objective=args.objective,
        device=device,
        select_tasks=args.select_tasks,
        select_population=args.select_population,
        select_interval=args.select_interval,
        anchors=args.anchors,
    )
    fit_line = Progress("priors fit: fine-tuning runs", quiet=args.quiet)
    select_line = Progress("priors fit: strategy runs", quiet=args.quiet)
    with fit_line, select_line:
        if args.address is None:
            priors = fit_priors(
                ckpt,
                config,
                progress=fit_line,
                select_progress=select_line,
                log=None if args.quiet else _stderr_line,
            )
        else:
            from raymeta.orchestration.priors_remote import fit_priors_remote

            priors = fit_priors_remote(
                ckpt,
                config,
                address=args.address,
                cpus=cpus,
                gpus=gpus,
                progress=fit_line,
                select_progress=select_line,
            )
    write_priors(path, priors.to_dict())
    print(format_priors(priors))
    print(f"wrote {priors_file(path)} ({priors.info['fit_seconds']:.1f} s)", file=sys.stderr)
    return 0


def _size_arg(text: Any) -> int:
    """``type=`` for ``--memory-budget`` (``raymeta.memory.parse_size``)."""
    from raymeta.errors import ConfigError
    from raymeta.memory import parse_size

    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stderr_line(text: str) -> None:
    """A line on stderr that starts on a fresh line (a progress line may be open there)."""
    sys.stderr.write(("\r\x1b[K" if sys.stderr.isatty() else "") + text + "\n")
    sys.stderr.flush()


def check_priors_writable(path: str) -> None:
    """Refuse, before the fit, a checkpoint whose priors could not be written afterwards: a
    ``priors.json`` that is not a file, a checkpoint directory where the new priors file and
    ``meta.json`` cannot be created, or a parent where its write lock cannot be."""
    from pathlib import Path

    from raymeta.errors import ConfigError
    from raymeta.paths import probe_writable

    p = Path(path).absolute()
    target = p / "priors.json"
    if target.exists() and not target.is_file():
        raise ConfigError(f"cannot write {target}: it exists and is not a file")
    probe_writable(target, "priors into --meta")  # probes the checkpoint directory
    probe_writable(p, "priors into --meta")  # probes its parent (the lock file lives there)


def _show(args: argparse.Namespace) -> int:
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.plugins import short_name
    from raymeta.priors import load_priors
    from raymeta.priors.show import format_priors

    ckpt = load_meta_checkpoint(_meta(args))
    cands = {
        name: {
            "model": short_name(c.spec.name),
            "algorithm": c.info.get("algorithm", ""),
            "val_loss": (c.info.get("metrics") or {}).get("val_loss", ""),
        }
        for name, c in ckpt.candidates.items()
    }
    print(format_priors(load_priors(ckpt), cands if len(cands) > 1 else None))
    return 0
