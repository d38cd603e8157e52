"""Everything ``raymeta tune`` decides before Ray starts: task, checks, prior, budget split.

Why a separate, Ray-free step: every user error (bad task spec, shape mismatch, empty split,
NaN targets, missing priors, a population the budget cannot feed) must be a one-line error
raised before anything is written to ``--out`` or any Ray process is started.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint
from raymeta.errors import ConfigError, DataError
from raymeta.orchestration.tune.trainable import Candidate, TrialSetup
from raymeta.priors import Prior, broad_prior, broad_space, load_priors
from raymeta.tasks import Task, make_family, resize_splits

SCHEDULERS = ("pbt", "pb2", "asha", "random")
INITS = ("meta", "scratch")
PRIORS = ("learned", "broad")
DEFAULT_STEPS_PER_MEMBER = 100
# reports (= PBT perturbation rounds) per member by default: each exploit restarts a trial from a
# checkpoint, so a handful of rounds keeps a small run fast while PBT still gets to act
DEFAULT_REPORTS = 4
_SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(\d+)$")


@dataclass
class TunePlan:
    ckpt: MetaCheckpoint
    task: Task
    setup: TrialSetup
    prior: Prior
    portfolio: list[dict[str, Any]]
    population: int
    members: int
    budget: int
    steps_per_member: int
    interval: int
    scheduler: str
    init: str
    prior_name: str
    seed: int
    notes: list[str] = field(default_factory=list)
    initial: list[dict[str, Any]] = field(default_factory=list)  # see initial_configs
    task_options: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return f"{self.init}+{self.prior_name}+{self.scheduler}"

    @property
    def n_intervals(self) -> int:
        return -(-self.steps_per_member // self.interval)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a rerun with the same ``--out`` to be a resume."""
        return {
            "meta": str(self.ckpt.path),
            "task": self.task.task_id,
            "population": self.population,
            "members_per_trial": self.members,
            "budget": self.budget,
            "interval": self.interval,
            "scheduler": self.scheduler,
            "init": self.init,
            "prior": self.prior_name,
            "seed": self.seed,
        } | ({"task_options": self.task_options} if self.task_options else {})


def resolve_task(spec: str, ckpt: MetaCheckpoint, options: Mapping[str, Any] | None = None) -> Task:
    """``FAMILY:INDEX`` (a held-out meta-test task of the checkpoint's family, drawn with the
    checkpoint's family options, split sizes overridable by ``options``) or a Parquet file."""
    m = _SPEC.match(spec)
    if m and not Path(spec).exists():
        name, index = m.group(1), int(m.group(2))
        if name != ckpt.family.name:
            raise ConfigError(
                f"task {spec!r}: the meta-checkpoint was trained on family {ckpt.family.name!r}; use {ckpt.family.name}:INDEX or a Parquet task file"
            )
        return make_family(resize_splits(ckpt.family, options)).task("test", index)
    if options:
        raise ConfigError("--task-option applies to FAMILY:INDEX tasks, not to Parquet task files")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"task {spec!r} is neither FAMILY:INDEX nor an existing Parquet task file"
        )
    from raymeta.tasks.parquet import load_task_file

    return load_task_file(path)


def check_task(task: Task, ckpt: MetaCheckpoint) -> None:
    """Refuse tasks the checkpoint's models cannot fit, and data no member could learn from."""
    for split in ("train", "val", "test"):
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        if len(x) == 0 or len(y) == 0:
            raise DataError(f"task {task.task_id}: the {split} split is empty")
        if len(x) != len(y):
            raise DataError(
                f"task {task.task_id}: the {split} split has {len(x)} inputs but {len(y)} targets"
            )
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            raise DataError(f"task {task.task_id}: the {split} split has NaN or infinite targets")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise DataError(f"task {task.task_id}: the {split} split has NaN or infinite inputs")
        if task.kind == "classification" and (int(y.min()) < 0 or int(y.max()) >= task.output_dim):
            raise DataError(
                f"task {task.task_id}: {split} labels must lie in [0, {task.output_dim}), got {int(y.min())}..{int(y.max())}"
            )
    for name, cand in ckpt.candidates.items():
        s = cand.spec
        same_in = tuple(s.input_shape) == tuple(task.input_shape)
        if not same_in and math.prod(s.input_shape) == math.prod(task.input_shape):
            for split in ("train", "val", "test"):  # flat Parquet features -> the model's layout
                x = getattr(task, f"x_{split}")
                setattr(task, f"x_{split}", x.reshape(len(x), *s.input_shape))
            same_in = True
        out_ok = (
            int(task.output_dim) <= int(s.output_dim)
            if task.kind == "classification"
            else int(task.output_dim) == int(s.output_dim)
        )
        if not same_in or not out_ok:
            raise DataError(
                f"meta-checkpoint model {name!r} takes inputs {tuple(s.input_shape)} with {s.output_dim} outputs, "
                f"but task {task.task_id} has inputs {tuple(task.input_shape)} with {task.output_dim} outputs"
            )


def choose_prior(
    ckpt: MetaCheckpoint, which: str, n_train: int
) -> tuple[Prior, list[dict[str, Any]]]:
    """The prior and the portfolio to evaluate first (learned: fitted ones; broad: none)."""
    if which == "learned":
        priors = load_priors(ckpt)  # a checkpoint without priors.json is a clear CheckpointError
        return priors.learned, [dict(c) for c in priors.portfolio]
    if ckpt.priors is not None:
        return load_priors(ckpt).prior("broad"), []
    return broad_prior(broad_space(list(ckpt.candidates), max_batch=n_train)), []


def initial_configs(
    portfolio: list[dict[str, Any]], prior: Prior, population: int, seed: int
) -> list[dict[str, Any]]:
    """Every trial's first config, fixed up front: the portfolio first, then seeded draws from
    the prior itself. Tune's own ``param_space`` domains are per-parameter marginals and would
    lose the prior's optimizer-conditional and joint structure, so with every trial in
    ``points_to_evaluate`` Tune never samples from them (they only describe the space)."""
    head = [dict(c) for c in portfolio[:population]]
    return head + prior.sample(population - len(head), np.random.default_rng([seed, 11]))


def _choice(value: str, choices: tuple[str, ...], flag: str) -> str:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def plan_tune(
    meta: str | Path,
    task: str,
    population: int,
    members_per_trial: int = 1,
    scheduler: str = "pbt",
    budget: int | None = None,
    init: str = "meta",
    prior: str = "learned",
    seed: int = 0,
    interval: int | None = None,
    crash_marker: str | None = None,
    device: str = "cpu",
    task_options: Mapping[str, Any] | None = None,
) -> TunePlan:
    """Validate the request and build the per-trial setup (raises one-line ``RaymetaError``s)."""
    _choice(scheduler, SCHEDULERS, "--scheduler")
    _choice(init, INITS, "--init")
    _choice(prior, PRIORS, "--prior")
    if population < 1 or members_per_trial < 1:
        raise ConfigError(
            f"--population and --members-per-trial must be >= 1, got {population} and {members_per_trial}"
        )
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    n_members = population * members_per_trial
    if budget is None:
        budget = DEFAULT_STEPS_PER_MEMBER * n_members
    steps = budget // n_members
    if steps < 1:
        raise ConfigError(
            f"population {population} x {members_per_trial} = {n_members} members needs --budget >= {n_members} member-steps (one step each), got {budget}"
        )
    if interval is None:
        interval = max(1, -(-steps // DEFAULT_REPORTS))
    if interval < 1:
        raise ConfigError(f"--interval must be >= 1, got {interval}")
    interval = min(interval, steps)
    ckpt = load_meta_checkpoint(meta)
    the_task = resolve_task(task, ckpt, task_options)
    check_task(the_task, ckpt)
    the_prior, portfolio = choose_prior(ckpt, prior, len(the_task.x_train))
    cands = {
        n: Candidate(c.spec, c.params if init == "meta" else None)
        for n, c in ckpt.candidates.items()
    }
    setup = TrialSetup(
        kind=the_task.kind,
        x_train=the_task.x_train,
        y_train=the_task.y_train,
        x_val=the_task.x_val,
        y_val=the_task.y_val,
        candidates=cands,
        prior=the_prior,
        members=members_per_trial,
        steps_per_member=steps,
        interval=interval,
        seed=seed,
        crash_marker=crash_marker,
        device=device,
    )
    return TunePlan(
        ckpt,
        the_task,
        setup,
        the_prior,
        portfolio[:population],
        population,
        members_per_trial,
        budget,
        steps,
        interval,
        scheduler,
        init,
        prior,
        seed,
        list(the_task.notes),
        initial_configs(portfolio, the_prior, population, seed),
        dict(task_options or {}),
    )
