"""``raymeta meta-train``: meta-train an initialization over a task family on Ray Train."""

from __future__ import annotations

import argparse
from typing import Any

from raymeta.cli._common import (
    add_command,
    address_arg,
    defer_required,
    float_arg,
    int_arg,
    path_arg,
)
from raymeta.options import parse_options
from raymeta.paths import output_arg

DESCRIPTION = """Meta-train an initialization (MAML, FOMAML, Reptile, Meta-SGD, ANIL) over a task
family with W Ray Train workers. Each worker computes the vmapped meta-gradient of its own shard
of the meta-batch (drawn from a seed derived from seed, step and rank); the gradients are
all-reduced (gloo on CPU, NCCL on GPU) and every worker takes the same outer step. A meta-batch
that W does not divide is split as evenly as possible: the first (B mod W) shards get one extra
task. The result is a meta-checkpoint directory in --out."""

EPILOG = """Run state: checkpoints live in a hidden sibling of --out (.<name>.meta-train/), or
under --storage (a local path or s3://, gs:// URI; multi-node clusters need shared storage).
Rerunning the same command resumes from the last checkpoint and ends with the same parameters
as an uninterrupted run; a different config for an existing --out is refused unless
--overwrite. Without --address an embedded local Ray (127.0.0.1) is started and shut down at
the end; with --address (or RAY_ADDRESS, e.g. under 'ray job submit') the command joins that
cluster. --local runs the same computation in this process without Ray (with --workers W it
uses the same W shards, so it reproduces the Ray run). Every flag can also be given in
--config FILE.yaml (keys are the flag names, e.g. meta_batch: 64, family_options: {ways: 5}).

CANDIDATES: one meta-checkpoint can hold several models for 'raymeta priors fit' to weigh and
'raymeta tune' / sweeps to choose from. Each --candidate is a name followed by what differs
from the run's flags: model=, algo=, inner_steps=, inner_lr=, first_order=, weights=; any other
KEY=VALUE is an option of the candidate's model (a candidate naming its own model does not
inherit --model-option). algo=pretrain trains the model by plain supervised learning: on
families with global classes (digits, omniglot) one classifier over all meta-train classes,
stored with a fresh N-way head (zeros); elsewhere on the meta-train tasks' own rows; weights=FILE takes your own pretrained weights (a state dict
of tensors, read with torch.load(weights_only=True) and checked against the model) and is not
trained. Example:
  raymeta meta-train --family digits --out ck --candidate 'cnn model=conv4 hidden=32' \
      --candidate 'mlp model=mlp widths=[128,64]' --candidate 'mlp-reptile model=mlp algo=reptile' \
      --candidate 'cnn-pre model=conv4 algo=pretrain' --candidate 'mine model=conv4 weights=my.pt'
Trained candidates run one after another (one Ray Train run each); a rerun of the same command
skips the finished ones and resumes the interrupted one.

MAML++: the options of Antoniou et al., "How to train your MAML" (2019), for the top of the
few-shot tables: --multi-step-loss N (weights start uniform over the inner steps, the earlier
ones decay linearly to a floor of 0.03/S and the last grows; from outer step N on, the last
step's loss alone), --learn-inner-lr (LSLR: a learned [inner-steps] rate per parameter tensor,
stored as lslr.<name> in the checkpoint and used by meta-validation), --outer-schedule cosine
--outer-lr-min LR (cosine annealing of the outer lr over --steps; a resumed run continues it
exactly), --first-order-until N (derivative-order annealing). Example:
  raymeta meta-train --family omniglot --model conv4 --inner-steps 5 --inner-lr 0.1 \
      --multi-step-loss 1000 --learn-inner-lr --outer-schedule cosine \
      --outer-lr-min 1e-5 --first-order-until 500 --out ck

YOUR OWN MODEL OR FAMILY: --model mypkg.nets:TinyNet and --family mypkg.tasks:Waves import your
code in every Ray worker (the import path is stored in meta.json). A factory is called as
factory(input_shape, output_dim, **model_options) and returns a torch.nn.Module whose last layer
is named 'head'; a family class is called with its --family-option values and subclasses
raymeta.tasks.TaskFamily. Check them first with raymeta.testing.check_model / check_task_family.
On a cluster ship the module with the job: ray job submit --working-dir . -- raymeta meta-train ..."""


# Ray Train's own flags and their defaults: --local (one process, no Ray) has no run state under
# --storage, no checkpoints to take or restart from and no workers to reserve resources for
RAY_ONLY: dict[str, Any] = {
    "storage": None,
    "checkpoint_every": 100,
    "max_failures": 3,
    "cpus_per_worker": 1,
    "gpus_per_worker": 0,
}


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "meta-train",
        "meta-train an initialization over a task family on Ray Train",
        _run,
        DESCRIPTION,
    )
    p.epilog = EPILOG
    g = p.add_argument_group("what to learn")
    g.add_argument(
        "--family",
        default="sinusoid",
        help="task family: sinusoid, digits, omniglot, parquet, a plugin name (entry point "
        "raymeta.families) or an import path package.module:Class",
    )
    g.add_argument(
        "--family-option",
        dest="family_options",
        action="append",
        metavar="K=V",
        help="family option (repeatable), e.g. ways=5",
    )
    g.add_argument(
        "--model",
        default="auto",
        help="model: mlp, conv4, a plugin name (entry point raymeta.models) or an import path "
        "package.module:factory (auto = the family's default model)",
    )
    g.add_argument(
        "--model-option",
        dest="model_options",
        action="append",
        metavar="K=V",
        help="model option (repeatable), e.g. widths=[40,40]",
    )
    g.add_argument(
        "--algo",
        default="maml",
        choices=["maml", "fomaml", "reptile", "metasgd", "anil", "pretrain"],
        help="meta-learning algorithm (pretrain = supervised pretraining, over all meta-train "
        "classes where the family has global classes: the 'pretrain, then fine-tune' baseline)",
    )
    g.add_argument(
        "--candidate",
        dest="candidates",
        action="append",
        metavar="'NAME KEY=VALUE ...'",
        help="a model candidate for model selection (repeatable; see CANDIDATES below)",
    )
    g.add_argument(
        "--inner-steps", type=int_arg(0, 100_000), default=1, help="inner-loop adaptation steps"
    )
    g.add_argument(
        "--inner-lr",
        type=float_arg(0.0, low_open=True),
        default=0.01,
        help="inner-loop learning rate",
    )
    g.add_argument(
        "--first-order",
        action="store_true",
        help="drop second-order terms (MAML -> FOMAML): maml, metasgd, anil (a no-op with "
        "fomaml; reptile and pretrain have none to drop)",
    )
    g.add_argument(
        "--checkpoint-inner",
        action="store_true",
        help="recompute each inner step in the backward pass (less memory for long inner loops)",
    )
    g.add_argument(
        "--outer-optimizer", default="adam", choices=["adam", "sgd"], help="outer (meta) optimizer"
    )
    g.add_argument(
        "--outer-lr", type=float_arg(0.0, low_open=True), default=1e-3, help="outer learning rate"
    )
    m = p.add_argument_group(
        "MAML++ options (Antoniou et al. 2019; see MAML++ below)",
    )
    m.add_argument(
        "--multi-step-loss",
        type=int_arg(0),
        default=0,
        metavar="N",
        help="for the first N outer steps (at most --steps), the task loss is a weighted sum of "
        "the query losses after every inner step, annealed toward the last step's (0 = off)",
    )
    m.add_argument(
        "--learn-inner-lr",
        action="store_true",
        help="learn one inner learning rate per parameter tensor per inner step (maml, fomaml, "
        "anil)",
    )
    m.add_argument(
        "--rates-lr-scale",
        type=float_arg(0.0, low_open=True),
        default=1.0,
        metavar="X",
        help="outer learning rate of learned inner rates (--learn-inner-lr, metasgd) as a "
        "multiple of --outer-lr (default 1; 0.1 measured best on sinusoid, see BENCHMARKS.md)",
    )
    m.add_argument(
        "--outer-schedule",
        default="constant",
        choices=["constant", "cosine"],
        help="outer learning-rate schedule over --steps",
    )
    m.add_argument(
        "--outer-lr-min",
        type=float_arg(0.0),
        default=0.0,
        help="the cosine schedule's final outer learning rate (below --outer-lr)",
    )
    m.add_argument(
        "--first-order-until",
        type=int_arg(0),
        default=0,
        metavar="N",
        help="first-order meta-gradients for the first N outer steps (below --steps), "
        "second-order after (maml, metasgd, anil)",
    )
    g.add_argument("--steps", type=int_arg(1), default=1000, help="outer steps")
    g.add_argument(
        "--meta-batch",
        type=int_arg(1),
        default=25,
        help="tasks per outer step, split over the workers",
    )
    g.add_argument(
        "--seed",
        type=int_arg(0),
        default=0,
        help="seed of the initialization and of every task draw",
    )
    g.add_argument(
        "--chunk-size",
        type=int_arg(1),
        default=None,
        help="tasks per vmapped chunk (bounds memory; default: all)",
    )
    g.add_argument(
        "--val-every", type=int_arg(1), default=100, help="meta-validation loss every N steps"
    )
    g.add_argument("--val-tasks", type=int_arg(1), default=100, help="meta-validation tasks")
    g.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="training precision"
    )
    r = p.add_argument_group("where and how to run")
    r.add_argument(
        "--out",
        type=output_arg("--out"),
        default=None,
        required=True,
        help="output meta-checkpoint directory (required)",
    )
    r.add_argument(
        "--workers",
        type=int_arg(1),
        default=1,
        help="Ray Train workers (= shards of the meta-batch)",
    )
    r.add_argument(
        "--cpus-per-worker",
        type=float_arg(0.0, low_open=True),
        default=RAY_ONLY["cpus_per_worker"],
        help="CPUs reserved per worker (also its torch threads)",
    )
    r.add_argument(
        "--gpus-per-worker",
        type=float_arg(0.0),
        default=RAY_ONLY["gpus_per_worker"],
        help="GPUs per worker; > 0 uses CUDA and NCCL",
    )
    r.add_argument(
        "--address",
        type=address_arg,
        default=None,
        help="join this Ray cluster (HOST:PORT of its head, or auto; the Ray Client's ray:// is not supported)",
    )
    r.add_argument(
        "--storage",
        type=path_arg,
        default=RAY_ONLY["storage"],
        help="Ray Train storage_path: local path or s3://, gs:// URI",
    )
    r.add_argument(
        "--checkpoint-every",
        type=int_arg(1),
        default=RAY_ONLY["checkpoint_every"],
        help="checkpoint every N steps",
    )
    r.add_argument(
        "--max-failures",
        type=int_arg(-1),
        default=RAY_ONLY["max_failures"],
        help="worker-group restarts from the last checkpoint (-1 = forever)",
    )
    r.add_argument(
        "--log-every",
        type=int_arg(1),
        default=None,
        help="progress line every N steps (default: about 20 lines per run)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out / discard an unfinished run",
    )
    r.add_argument(
        "--local",
        action="store_true",
        help="run in this process without Ray (the same shards as --workers, so it reproduces "
        "that Ray Train run; not with --address, --storage, --checkpoint-every, --max-failures, "
        "--cpus-per-worker or --gpus-per-worker)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    defer_required(p)  # --out may come from --config


def build_config(args: argparse.Namespace) -> Any:
    from raymeta.core.train import MetaTrainConfig

    return MetaTrainConfig(
        family=args.family,
        family_options=parse_options(args.family_options, "family"),
        model=args.model,
        model_options=parse_options(args.model_options, "model"),
        algo=args.algo,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        first_order=bool(args.first_order),
        checkpoint_inner=bool(args.checkpoint_inner),
        outer_optimizer=args.outer_optimizer,
        outer_lr=args.outer_lr,
        steps=args.steps,
        meta_batch=args.meta_batch,
        seed=args.seed,
        chunk_size=args.chunk_size,
        val_every=args.val_every,
        val_tasks=args.val_tasks,
        shards=args.workers,
        dtype=args.dtype,
        candidates=list(args.candidates or []),
        multi_step_loss=args.multi_step_loss,
        learn_inner_lr=bool(args.learn_inner_lr),
        outer_schedule=args.outer_schedule,
        outer_lr_min=args.outer_lr_min,
        first_order_until=args.first_order_until,
        rates_lr_scale=args.rates_lr_scale,
    ).validate()


def _check_local_flags(args: argparse.Namespace) -> None:
    """``--local`` with a Ray Train flag set is one line, not a flag silently ignored."""
    from raymeta.errors import ConfigError

    given = [k for k, default in RAY_ONLY.items() if getattr(args, k) != default]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"{flags}: Ray Train option(s) that --local (this process, no Ray) would ignore; "
            "drop them or run without --local"
        )


def _run(args: argparse.Namespace) -> int:
    if args.local and args.address is not None:
        from raymeta.errors import ConfigError

        raise ConfigError(
            f"--local meta-trains in this process without Ray and cannot join --address "
            f"{args.address}: give one of them"
        )
    if args.local:
        _check_local_flags(args)
    cfg = build_config(args)
    if args.local:
        from raymeta.orchestration.meta_train.local import run_local_meta_train

        run_local_meta_train(
            cfg,
            args.out,
            overwrite=args.overwrite,
            log_every=args.log_every,
            progress=not args.quiet,
        )
        return 0
    from raymeta.orchestration.meta_train.ray_train import run_meta_train

    run_meta_train(
        cfg,
        args.out,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        address=args.address,
        storage=args.storage,
        checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures,
        overwrite=args.overwrite,
        cpus_per_worker=args.cpus_per_worker,
        log_every=args.log_every,
        progress=not args.quiet,
    )
    return 0
