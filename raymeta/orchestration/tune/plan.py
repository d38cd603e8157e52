"""Everything ``raymeta tune`` decides before Ray starts: task, checks, prior, budget split.

Why a separate, Ray-free step: every user error (bad task spec, shape mismatch, empty split,
NaN targets, missing priors, a population the budget cannot feed) must be a one-line error
raised before anything is written to ``--out`` or any Ray process is started.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint
from raymeta.errors import ConfigError
from raymeta.finetune.run import check_task_data
from raymeta.finetune.strategy import (
    fixed_default,
    member_configs,
    resolve_auto,
    strategy_prior,
)
from raymeta.orchestration.tune.request import TuneRequest
from raymeta.orchestration.tune.trainable import TrialSetup
from raymeta.plugins import check_portable, import_roots
from raymeta.priors import Prior
from raymeta.tasks import Task, make_family, resize_splits

_SPEC = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(\d+)$")


@dataclass
class TunePlan:
    """A checked request with everything resolved: checkpoint, task, prior, trial setup."""

    request: TuneRequest
    ckpt: MetaCheckpoint
    task: Task
    setup: TrialSetup
    prior: Prior
    portfolio: list[dict[str, Any]]
    initial: list[dict[str, Any]]  # every trial's first config (see ``member_configs``)
    why: str = ""  # why this strategy ran (``auto``: what meta-val evidence chose it)

    @property
    def strategy(self) -> str:
        return self.request.strategy_label

    @property
    def n_intervals(self) -> int:
        return -(-self.setup.steps_per_member // self.setup.interval)

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def notes(self) -> list[str]:
        """What the user should know: the task's notes, and for an init that learned its inner
        rates, that fine-tuning does not use them (its short loop was trained for them: a plain
        fine-tune of it can do far worse, BENCHMARKS.md "Learned inner rates")."""
        out = list(self.task.notes)
        for name, cand in self.ckpt.candidates.items():
            if cand.learned_rates:
                steps = cand.info.get("inner_steps", "?")
                out.append(
                    f"candidate {name!r} learned its inner rates ({cand.learned_rates}, "
                    f"{steps} inner steps); fine-tuning applies one learning rate per member, "
                    "not those rates (its own loop: MetaEngine.evaluate)"
                )
        return out

    def fingerprint(self) -> dict[str, Any]:
        return self.request.fingerprint()


def resolve_task(spec: str, ckpt: MetaCheckpoint, options: Mapping[str, Any] | None = None) -> Task:
    """``FAMILY:INDEX`` or ``FAMILY:TASK_ID`` (a held-out meta-test task of the checkpoint's
    family, drawn with the checkpoint's family options, split sizes overridable by
    ``options``; a family that lists task ids, like ``parquet``, is searched by id first) or a
    Parquet file. The spec is the family's name, a ':', then the index or id, so a family named
    by an import path reads ``pkg.mod:Cls:3`` and an id may hold ':' itself."""
    family = ckpt.family.name
    if spec.startswith(family + ":") and len(spec) > len(family) + 1 and not Path(spec).exists():
        ident = spec[len(family) + 1 :]
        return _held_out_task(spec, ident, make_family(resize_splits(ckpt.family, options)))
    if _SPEC.match(spec) and not Path(spec).exists():
        raise ConfigError(
            f"task {spec!r}: the meta-checkpoint was trained on family {ckpt.family.name!r}; use {ckpt.family.name}:INDEX or a Parquet task file"
        )
    if options:
        raise ConfigError("--task-option applies to FAMILY:INDEX tasks, not to Parquet task files")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"task {spec!r} is neither FAMILY:INDEX (or FAMILY:TASK_ID) nor an existing Parquet task file"
        )
    from raymeta.tasks.parquet import load_task_file

    return load_task_file(path)


def _held_out_task(spec: str, ident: str, family: Any) -> Task:
    """The held-out task ``ident`` names: a task id the family lists, else an index."""
    ids = family.task_ids("test") if callable(getattr(family, "task_ids", None)) else None
    if ids is not None and ident in ids:
        return family.task("test", ids.index(ident))  # type: ignore[no-any-return]
    if ident.isascii() and ident.isdigit():
        return family.task("test", int(ident))  # type: ignore[no-any-return]
    if ids is None:
        raise ConfigError(
            f"task {spec!r} is neither FAMILY:INDEX (INDEX an integer >= 0) nor an existing Parquet task file"
        )
    other = next(
        (s for s in ("train", "val") if ident in family.task_ids(s)), None
    )  # a known task, but not held out
    why = f"is in meta-split {other!r}, not held out" if other else "is not a held-out task id"
    raise ConfigError(
        f"task {spec!r}: {ident!r} {why} (raymeta data validate lists the {len(ids)} held-out ids)"
    )


def check_task(task: Task, ckpt: MetaCheckpoint) -> None:
    """Refuse tasks the checkpoint's models cannot fit, and data no member could learn from
    (``finetune.run.check_task_data``, what ``run_population`` checks too), after laying flat
    Parquet features out as a model's input shape when the sizes agree."""
    for cand in ckpt.candidates.values():
        s = cand.spec
        same_in = tuple(s.input_shape) == tuple(task.input_shape)
        if not same_in and math.prod(s.input_shape) == math.prod(task.input_shape):
            for split in ("train", "val", "test"):  # flat Parquet features -> the model's layout
                x = getattr(task, f"x_{split}")
                setattr(task, f"x_{split}", x.reshape(len(x), *s.input_shape))
    check_task_data(task, ckpt.candidates)


def plan_tune(request: TuneRequest, crash_marker: str | None = None) -> TunePlan:
    """Resolve the request: load the checkpoint, build and check the task, choose the prior and
    the trials' first configs (raises one-line ``RaymetaError``s, writes nothing)."""
    ckpt = load_meta_checkpoint(request.meta)
    request, why = resolve_request(request, ckpt)
    names = [("family", ckpt.family.name)]
    names += [("model", c.spec.name) for c in ckpt.candidates.values()]
    for kind, name in names:
        check_portable(kind, name)  # type: ignore[arg-type]
    the_task = resolve_task(request.task, ckpt, request.task_options)
    check_task(the_task, ckpt)
    strat = request.as_strategy()
    steps, n_train = request.steps_per_member, len(the_task.x_train)
    prior, portfolio = strategy_prior(ckpt, strat, n_train, steps)
    rng = np.random.default_rng([request.seed, 11])
    initial = member_configs(
        strat, request.trials, prior, portfolio, rng, fixed_default(ckpt, n_train, steps)
    )
    setup = TrialSetup(
        kind=the_task.kind,
        x_train=the_task.x_train,
        y_train=the_task.y_train,
        x_val=the_task.x_val,
        y_val=the_task.y_val,
        candidates=dict(ckpt.candidates),
        init=str(request.init),
        prior=prior,
        members=request.members_per_trial,
        steps_per_member=steps,
        interval=request.report_interval,
        seed=request.seed,
        crash_marker=crash_marker,
        device="cuda" if request.gpus_per_trial > 0 else "cpu",
        import_roots=import_roots(name for _, name in names),
    )
    return TunePlan(
        request, ckpt, the_task, setup, prior, portfolio[: request.trials], initial, why
    )


def resolve_request(request: TuneRequest, ckpt: MetaCheckpoint) -> tuple[TuneRequest, str]:
    """``request`` with ``auto`` replaced by the checkpoint's chosen strategy, and why.

    A chosen fixed default fine-tune is one member for the request's steps per member (what
    selection measured), whatever population was asked for: the report says so."""
    if not request.is_auto:
        return request, f"strategy {request.strategy_label} was given"
    strat, why = resolve_auto(ckpt)
    sizes: dict[str, Any] = {}
    if strat.fixed:
        sizes = {"trials": 1, "members_per_trial": 1, "budget": request.steps_per_member}
        if request.population > 1:
            why += f"; it is one member, so {request.population - 1} of the asked-for members did not run"
    resolved = replace(request, strategy=strat.name, init=None, prior=None, scheduler=None, **sizes)
    return resolved, f"auto = {strat.name}: {why}"
