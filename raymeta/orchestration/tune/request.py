"""``TuneRequest``: what ``raymeta tune`` does, one typed request for the CLI and the API.

Sizes mean the same in every raymeta command: the *population* is the members of the run,
``trials`` Ray Tune trials of ``members_per_trial`` packed members each; the *budget* is the
total member-steps of the whole population and a cap (default 100 steps per member): each
member trains ``budget // population`` steps (``steps_per_member``) and the run's reported
``member_steps`` never exceed the budget.

The strategy (``init``, ``prior``, ``scheduler``; or ``strategy="meta+learned+pbt"`` at once)
means what it means in sweeps (``raymeta.finetune.strategy``). Without any of them it is
``auto``: the strategy ``raymeta priors fit`` chose for the checkpoint's family on meta-val
tasks, resolved by ``plan.plan_tune``. From Python, ``scheduler`` may
also be a Ray Tune ``TrialScheduler`` object of your own instead of a name.

Every field is checked when the request is made (types, ranges, finiteness: ``population=True``
is not one trial and ``cpus_per_trial=nan`` never reaches Ray); ``check_paths`` then probes
``out`` and a local ``storage`` without creating anything, before any work.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from raymeta import checks
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.models import expected_shapes
from raymeta.errors import ConfigError, DeprecatedOption
from raymeta.finetune.strategy import (
    AUTO,
    FIXED_PRIORS,
    FIXED_SCHEDULER,
    SCHEDULERS,
    TAKES_SCHEDULER,
    Strategy,
)
from raymeta.orchestration.ray_runtime import parse_address
from raymeta.paths import probe_writable
from raymeta.results.sink import check_sweep_name

MAX_TRIALS = 100_000  # Tune trials of one run
MAX_MEMBERS = 1 << 24  # members of the whole population
DEFAULT_STEPS_PER_MEMBER = 100
# reports (= PBT perturbation rounds) per member by default: each exploit restarts a trial from a
# checkpoint, so a handful of rounds keeps a small run fast while PBT still gets to act
DEFAULT_REPORTS = 4
DEFAULT_LABEL = "tune"


@dataclass(frozen=True)
class TuneRequest:
    """Tune one task (see the module docstring; the CLI flags carry the same names)."""

    meta: str | Path
    task: str
    trials: int
    out: str | Path = "tune-out"
    members_per_trial: int = 1
    strategy: str | None = None
    init: str | None = None
    prior: str | None = None
    scheduler: Any = None  # a name in SCHEDULERS, or a ray.tune TrialScheduler object
    budget: int | None = None
    interval: int | None = None
    seed: int = 0
    task_options: Mapping[str, Any] = field(default_factory=dict)
    max_failures: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    storage: str | None = None
    label: str = DEFAULT_LABEL  # the results' ``sweep`` column: what reports group runs by
    # the run's name: the Tune experiment's (``storage/NAME``) and the results' label at once;
    # None: the experiment is named after ``out`` (``tune-<hash>``) and the label is ``label``
    name: str | None = None
    # reproducible runs (``run.make_scheduler``): synchronous PBT/PB2, ASHA one trial at a time
    deterministic: bool = False

    def __post_init__(self) -> None:
        c = checks
        set_ = object.__setattr__
        # paths, not anything str() can print: meta=None was accepted as the path "None" and
        # out=None / out=3 were a TypeError deep inside raymeta.tune
        c.path("--meta", self.meta)
        c.path("--out", self.out)
        c.string("--task", self.task)
        trials = c.integer("--trials", self.trials, 1, MAX_TRIALS)
        members = c.integer("--members-per-trial", self.members_per_trial, 1, MAX_MEMBERS)
        if trials * members > MAX_MEMBERS:
            raise ConfigError(
                f"population {trials} x {members} = {trials * members:,} members, more than "
                f"{MAX_MEMBERS:,}"
            )
        strat = self._strategy()
        if strat is None:  # auto: resolved against the checkpoint by ``plan.plan_tune``
            set_(self, "strategy", AUTO)
        else:
            set_(self, "init", strat.init)
            set_(self, "prior", strat.prior)
            if self.scheduler is None or isinstance(self.scheduler, str):
                set_(self, "scheduler", strat.scheduler)
        if self.scheduler == "pb2" and importlib.util.find_spec("sklearn") is None:
            raise ConfigError(  # Ray's PB2 fits a scikit-learn Gaussian process
                "--scheduler pb2 needs scikit-learn: pip install 'raymeta[pb2]'"
            )
        if strat is not None and strat.fixed and trials * members != 1:
            raise ConfigError(
                f"strategy {strat.name} is one member with the fixed default config: "
                "use --trials 1 --members-per-trial 1"
            )
        if self.budget is not None:
            c.integer("--budget", self.budget, 1)
            if self.budget < self.population:
                raise ConfigError(
                    f"population {trials} x {members} = {self.population} members needs "
                    f"--budget >= {self.population} member-steps (one step each), got {self.budget}"
                )
        if self.interval is not None:
            c.integer("--interval", self.interval, 1)
            steps = self.steps_per_member
            if self.interval > steps:  # never capped silently: no member would report at N
                budget = "--budget" if self.budget is not None else "the default budget"
                raise ConfigError(
                    f"--interval {self.interval} is more than the {steps} steps each member "
                    f"trains ({budget} {self.total_budget} // {self.population} members): "
                    f"give --interval <= {steps}"
                )
        c.integer("--seed", self.seed, 0)
        c.integer("--max-failures", self.max_failures, 0)
        c.number("--cpus-per-trial", self.cpus_per_trial, 0.0, low_open=True)
        c.number("--gpus-per-trial", self.gpus_per_trial, 0.0)
        set_(
            self,
            "task_options",
            dict(
                c.plain_data("--task-option", c.mapping("--task-option", self.task_options or {}))
            ),
        )
        c.string("label", self.label)
        if self.name is None:
            # the results' sweep column and folder (sweep=LABEL): checked here as --name is,
            # not once the checkpoint is loaded and the task built (label="a/b" was accepted)
            try:
                check_sweep_name(self.label)
            except ConfigError as exc:
                raise ConfigError(f"label{str(exc).removeprefix('sweep name')}") from None
        if self.name is not None:
            try:
                check_sweep_name(self.name)
            except ConfigError as exc:  # "sweep name 'x' must be ...": the flag's own words
                raise ConfigError(f"--name{str(exc).removeprefix('sweep name')}") from None
            if self.label not in (DEFAULT_LABEL, self.name):
                raise ConfigError(
                    f"--name {self.name} names the results too: give it, not label {self.label!r}"
                )
            set_(self, "label", self.name)
        c.boolean("--deterministic", self.deterministic)
        for name in ("address", "storage"):
            if getattr(self, name) is not None:
                c.string(f"--{name}", getattr(self, name))
        if self.address is not None and self.address.strip() not in ("auto", "local"):
            parse_address(self.address)  # as ray_context would, before the checkpoint is read

    def _strategy(self) -> Strategy | None:
        """``strategy`` and the ``init`` / ``prior`` / ``scheduler`` fields, reconciled; None
        for ``auto`` (the default: no strategy and none of the three fields given)."""
        sched = (
            self.scheduler if self.scheduler is None or isinstance(self.scheduler, str) else None
        )
        if sched is not None and sched not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {sched!r}")
        parts = {"init": self.init, "prior": self.prior, "scheduler": sched}
        if self.strategy == AUTO or (
            self.strategy is None and self.scheduler is None and not any(parts.values())
        ):
            given = [k for k, v in parts.items() if v is not None]
            if given:
                raise ConfigError(f"--{given[0]} contradicts --strategy auto")
            return None
        if self.strategy is None:
            fixed = parts["prior"] in FIXED_PRIORS
            self._no_scheduler_for_fixed(fixed, f"--prior {parts['prior']}")
            return Strategy(**{k: v for k, v in parts.items() if v is not None})
        strat = Strategy.parse(self.strategy)
        self._no_scheduler_for_fixed(strat.fixed, f"--strategy {strat.name}")
        for k, v in parts.items():
            # a fixed strategy's scheduler is FIXED_SCHEDULER, the value a dataclasses.replace
            # of a checked request carries: a contradiction, checked above, names the flag
            if v is not None and v != getattr(strat, k):
                raise ConfigError(f"--{k} {v} contradicts --strategy {strat.name}")
        return strat

    def _no_scheduler_for_fixed(self, fixed: bool, what: str) -> None:
        """A fixed prior is one member: a scheduler given with it (a name other than the one it
        runs with, or a scheduler object) would be ignored, so it is refused. Was: silently
        dropped (``--strategy meta+fixed-default --scheduler asha`` ran one unscheduled member;
        so did ``--strategy meta+fixed-default --init scratch``, from the meta-init)."""
        s = self.scheduler
        if not fixed or s is None or s == FIXED_SCHEDULER:
            return
        name = s if isinstance(s, str) else f"object {type(s).__name__}"
        raise ConfigError(f"--scheduler {name} with {what}: it would be ignored; {TAKES_SCHEDULER}")

    @classmethod
    def from_kwargs(cls, **kw: Any) -> TuneRequest:
        """A request from keyword arguments, taking the names ``run_tune`` took before sizes
        were renamed (``population`` for ``trials``, ``sweep`` for ``label``) with a warning."""
        for old, new in (("population", "trials"), ("sweep", "label")):
            if old in kw:
                if new in kw:
                    raise ConfigError(f"give {new}, not both it and the deprecated {old}")
                warnings.warn(
                    f"run_tune({old}=...) is deprecated: use {new}= (the population is the "
                    "members of the run: trials x members_per_trial)",
                    DeprecatedOption,
                    stacklevel=3,
                )
                kw[new] = kw.pop(old)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(f"unknown tune option(s): {', '.join(unknown)}")
        return cls(**kw)

    @property
    def population(self) -> int:
        """Members of the whole run."""
        return self.trials * self.members_per_trial

    @property
    def steps_per_member(self) -> int:
        return self.total_budget // self.population

    @property
    def total_budget(self) -> int:
        """The cap on the run's member-steps."""
        return self.budget or DEFAULT_STEPS_PER_MEMBER * self.population

    @property
    def report_interval(self) -> int:
        """Steps between reports (and PBT rounds): ``interval`` (never more than a member's
        steps: ``__post_init__`` refuses that), by default a quarter of a member's steps."""
        steps = self.steps_per_member
        return min(self.interval or max(1, -(-steps // DEFAULT_REPORTS)), steps)

    @property
    def scheduler_name(self) -> str:
        """The scheduler's name, or a custom scheduler object's class name."""
        s = self.scheduler
        return s if isinstance(s, str) else type(s).__name__

    @property
    def is_auto(self) -> bool:
        """The strategy is ``auto``: the checkpoint's choice, not yet resolved."""
        return self.strategy == AUTO

    @property
    def pick(self) -> str:
        """The final pick of the strategy (``best`` unless it names one)."""
        return Strategy.parse(self.strategy).pick if self.strategy and not self.is_auto else "best"

    @property
    def strategy_label(self) -> str:
        """The strategy as rows and reports name it (``meta+learned+pbt``)."""
        if self.is_auto:
            return AUTO
        tail = "" if self.pick == "best" else f"+{self.pick}"
        if self.prior in FIXED_PRIORS:  # as Strategy.name: was meta+fixed-head+random (or +pbt)
            return f"{self.init}+{self.prior}{tail}"
        return f"{self.init}+{self.prior}+{self.scheduler_name}{tail}"

    def as_strategy(self) -> Strategy:
        """The strategy (a custom scheduler object counts as PBT-like: the prior is explored)."""
        if self.is_auto:
            raise ConfigError("strategy auto is resolved against the meta-checkpoint first")
        sched = self.scheduler if isinstance(self.scheduler, str) else "pbt"
        return Strategy(str(self.init), str(self.prior), sched, self.pick)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a rerun with the same ``out`` to be a resume."""
        return (
            {
                "meta": str(Path(self.meta).expanduser().absolute()),
                "task": self.task,
                "trials": self.trials,
                "members_per_trial": self.members_per_trial,
                "budget": self.total_budget,
                "interval": self.report_interval,
                "scheduler": self.scheduler_name if not self.is_auto else AUTO,
                "init": self.init,
                "prior": self.prior,
                "seed": self.seed,
            }
            | ({"task_options": dict(self.task_options)} if self.task_options else {})
            | ({"pick": self.pick} if self.pick != "best" else {})
            | (
                # only when on, so run.json files of earlier runs still match (and resume)
                {"deterministic": True} if self.deterministic else {}
            )
            # the experiment directory is named after it: a rerun under another name (or
            # none) is another run, refused by run.json, not a resume that cannot find its state
            | ({"name": self.name} if self.name is not None else {})
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scheduler"] = self.scheduler_name
        d["meta"], d["out"] = str(self.meta), str(self.out)
        return d

    def check_paths(self) -> None:
        """``out`` and a local ``storage`` can be written (nothing is created), and neither
        lies in the meta-checkpoint: a run there (``--out META/tune``) wrote its reports, Ray
        Tune state and result parts into the checkpoint directory, which a later ``meta-train
        --overwrite`` of it replaces and whose manifest does not list them."""
        out_p = Path(self.out).expanduser().absolute()
        if out_p.exists() and not out_p.is_dir():
            raise ConfigError(f"--out {out_p} exists and is not a directory")
        probe_writable(out_p / "x" if out_p.is_dir() else out_p)
        self._outside_meta("--out", out_p)
        if self.storage is not None and "://" not in self.storage:
            st = Path(self.storage).expanduser().absolute()
            if st.exists() and not st.is_dir():
                raise ConfigError(f"--storage {st} exists and is not a directory")
            probe_writable(st / "x" if st.is_dir() else st, "--storage")
            self._outside_meta("--storage", st)

    def _outside_meta(self, flag: str, path: Path) -> None:
        meta = _resolved(Path(self.meta).expanduser())
        where = _resolved(path)
        if meta is not None and where is not None and (where == meta or meta in where.parents):
            raise ConfigError(
                f"{flag} {path} lies inside the meta-checkpoint --meta {self.meta}; "
                "pick a path outside it"
            )


def _resolved(path: Path) -> Path | None:
    """``path`` with symlinks resolved (a missing tail kept as given), or None if unreadable."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def check_members_fit(members_per_trial: int, ckpt: MetaCheckpoint) -> None:
    """One trial's packed members (weights, Adam moments, best snapshot, gradients) must fit."""
    for name, cand in ckpt.candidates.items():
        n_params = sum(math.prod(s) for s in expected_shapes(cand.spec).values())
        checks.check_fits(
            f"a tune trial of {members_per_trial} members of {name!r} ({n_params:,} parameters)",
            4.0 * 6 * n_params * members_per_trial,
            "lower --members-per-trial",
        )
