"""Fine-tune one task in-process with a population: the unit of work of a sweep.

Members train from the meta-init (``init="meta"``) or each from its own seeded random init
(``"scratch"``) for ``steps`` steps each, evaluated every ``interval`` steps, with the
population's PBT rule after each evaluation but the last (``pbt``; explore within ``prior``).
Members are grouped by their config's ``model`` (one ``Population`` per candidate, trained in
lockstep and exploiting within their group); the final model is the best snapshot of all of
them, tested once. No Ray here: the sweep ships this to Ray tasks.

Seeding (kept from the first sweeps, so their numbers reproduce): member ``i`` of a unit with
seed ``s`` draws minibatches with seed ``s * 1_000_003 + i`` and, from scratch, starts at the
random init of seed ``s * 10_007 + i``; the exploits draw from ``default_rng(s)``.
"""

from __future__ import annotations

import functools
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from raymeta import checks
from raymeta.core.checkpoint import Candidate, MetaCheckpoint
from raymeta.errors import ConfigError, DataError
from raymeta.finetune.curves import Curves
from raymeta.finetune.hparams import names
from raymeta.finetune.picks import InitState, MemberSpan, Pick, check_pick, final_picks
from raymeta.finetune.population import (
    SWEEP_RULE,
    Best,
    Evaluation,
    Exploit,
    Population,
    data_dtype,
    every,
    initial_state,
    run_schedule,
)
from raymeta.finetune.step import PopulationState
from raymeta.finetune.strategy import Strategy, fixed_default, member_configs, strategy_prior
from raymeta.priors import Prior, Priors
from raymeta.tasks import Task

INITS = ("meta", "scratch")
Params = dict[str, torch.Tensor]


@dataclass
class PopulationResult:
    """The curves of every member, the best snapshot, the final picks (``picks``: rule ->
    ``Pick``; ``test`` is the first rule's test metrics) and the wall time."""

    curves: Curves
    best: Best
    test: dict[str, float]
    wall_s: float
    picks: dict[str, Pick] = field(default_factory=dict)

    @property
    def member_steps(self) -> int:
        """Member-steps of the population and of the first rule (a refit's run)."""
        extra = next(iter(self.picks.values())).extra_steps if self.picks else 0
        return self.curves.member_steps_total + extra

    @property
    def pick(self) -> Pick:
        return next(iter(self.picks.values()))


def run_population(
    task: Task,
    candidates: Mapping[str, Candidate],
    configs: Sequence[Mapping[str, Any]],
    *,
    init: str,
    steps: int,
    interval: int,
    seed: int,
    prior: Prior | None = None,
    pbt: bool = False,
    picks: Sequence[str] = ("best",),
) -> PopulationResult:
    """Fine-tune ``len(configs)`` members on ``task`` (see the module docstring) and apply
    each final-pick rule of ``picks`` (``raymeta.finetune.picks``) to the population holding
    the best snapshot."""
    check_arguments(task, candidates, configs, seed, prior, pbt, picks)
    check_run(steps, interval, init, pbt, prior, configs, picks)
    t0 = time.perf_counter()
    groups = member_groups(candidates, configs)
    dtype = data_dtype(task.x_train)
    pops = []
    for name, idx in groups.items():
        cand = candidates[name]
        state = initial_state(
            cand.spec,
            cand.params if init == "meta" else None,
            [seed * 10_007 + i for i in idx],
            dtype,
        )
        seeds = [seed * 1_000_003 + i for i in idx]
        pops.append(
            Population(
                cand.spec,
                task.kind,
                name,
                [configs[i] for i in idx],
                seeds,
                state,
                horizon=steps,
            )
        )
    rng = np.random.default_rng(seed)
    exploit = Exploit(prior.perturb, SWEEP_RULE, lambda _s: rng) if pbt and prior else None
    stops = every(min(interval, steps), steps)
    runs = [
        run_schedule(
            p, (task.x_train, task.y_train), (task.x_val, task.y_val), stops, exploit=exploit
        )
        for p in pops
    ]
    members = list(groups.values())
    curves = Curves(started=t0)
    for evs in zip(*runs, strict=True):
        curves.add(merge_evaluations(evs, members))
    return conclude(
        task, candidates, pops, members, init=init, seed=seed, picks=picks, curves=curves, t0=t0
    )


def check_run(
    steps: int,
    interval: int,
    init: str,
    pbt: bool,
    prior: Prior | None,
    configs: Sequence[Mapping[str, Any]],
    picks: Sequence[str],
) -> None:
    """What ``run_population`` (and its batched form) refuses before any work. ``steps`` and
    ``interval`` are integers in 1..2**62 (a member's step count is an int64): 2.5 or NaN was a
    TypeError from ``range``, ``"2"`` a TypeError from a comparison, 10**30 an OverflowError."""
    for name, v in (("steps", steps), ("interval", interval)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= MAX_STEPS:
            raise ConfigError(f"{name} must be an integer in 1..2**62, got {checks.show_value(v)}")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r} (use {' or '.join(INITS)})")
    if pbt and prior is None:
        raise ConfigError("PBT needs a prior to explore within")
    if not configs:
        raise ConfigError("a population needs at least one member")
    if not picks:
        raise ConfigError("at least one final pick rule is needed")
    for rule in picks:
        check_pick(rule)


MAX_STEPS = 2**62  # steps of a member (its count is an int64 tensor entry)

# scratch inits are seeded ``seed * 10_007 + member`` (a torch seed, < 2**63): past this a
# seed was an internal "Overflow when unpacking long long"
MAX_SEED = 2**48


def check_arguments(
    task: Any,
    candidates: Any,
    configs: Any,
    seed: Any,
    prior: Any,
    pbt: Any,
    picks: Any,
) -> None:
    """``run_population``'s arguments as one-line errors before any work (it is public API):
    each of these was an AttributeError, TypeError, StopIteration or a torch RuntimeError from
    inside the population, and a task with NaN inputs or a ``prior="x"`` ran to a result."""
    if not isinstance(task, Task):
        raise ConfigError(f"task must be a raymeta Task, got {checks.show_value(task)}")
    if not isinstance(candidates, Mapping) or not candidates:
        raise ConfigError(
            "candidates must be a non-empty mapping of name: Candidate (a MetaCheckpoint's "
            f".candidates), got {checks.show_value(candidates)}"
        )
    for name, cand in candidates.items():
        if not isinstance(name, str) or not isinstance(cand, Candidate):
            raise ConfigError(f"candidate {name!r} is not a Candidate: {checks.show_value(cand)}")
    if isinstance(configs, (str, Mapping)) or not isinstance(configs, Sequence):
        raise ConfigError(f"configs must be a list of mappings, got {checks.show_value(configs)}")
    for i, c in enumerate(configs):
        if not isinstance(c, Mapping):
            raise ConfigError(f"each config must be a mapping, got {checks.show_value(c)}")
        check_config_keys(c, f"config {i}")
    checks.integer("seed", seed, 0, MAX_SEED)
    checks.boolean("pbt", pbt)
    if prior is not None and not isinstance(prior, Prior):
        raise ConfigError(f"prior must be a Prior or None, got {checks.show_value(prior)}")
    if isinstance(picks, str):
        raise ConfigError(f"picks must be a list of final picks, got {picks!r}")
    check_task_data(task, candidates)


def check_config_keys(config: Mapping[str, Any], where: str) -> None:
    """Every key of a member's config is a fine-tuning hyperparameter (``hparams.names()``,
    read at call time: the one vocabulary, ``model`` included). A member reads only those keys,
    so a typo such as ``lerning_rate`` trained at the default learning rate without a word;
    the configs raymeta itself passes (prior samples, portfolios, the fixed default) carry
    nothing else, so no extra is allowed."""
    known = names()
    unknown = [k for k in config if k not in known]
    if unknown:
        shown = ", ".join(
            repr(k) if isinstance(k, str) else checks.show_value(k) for k in unknown[:5]
        )
        raise ConfigError(f"{where}: unknown key(s) {shown} (a config takes {', '.join(known)})")


def check_task_data(task: Task, candidates: Mapping[str, Candidate]) -> None:
    """Every split non-empty, finite, labelled for the task's kind, and shaped for every
    candidate's model (what ``raymeta tune`` checks before Ray for the tasks it builds)."""
    who = f"task {task.task_id!r}"
    if task.kind not in ("regression", "classification"):
        raise DataError(f"{who}: kind must be regression or classification, got {task.kind!r}")
    for split in ("train", "val", "test"):
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"{who}: the {split} split is not tensors")
        if len(x) == 0 or len(x) != len(y):
            raise DataError(
                f"{who}: the {split} split has {len(x)} inputs and {len(y)} targets (>= 1 each, as many)"
            )
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise DataError(f"{who}: the {split} inputs must be finite floats")
        if task.kind == "regression":
            if not y.is_floating_point() or not bool(torch.isfinite(y).all()):
                raise DataError(f"{who}: the {split} targets must be finite floats")
        elif (
            y.is_floating_point()
            or y.dtype == torch.bool
            or int(y.min()) < 0
            or int(y.max()) >= task.output_dim
        ):
            raise DataError(
                f"{who}: the {split} labels must be integers in [0, {task.output_dim}), got {y.dtype}"
            )
    for name, cand in candidates.items():
        s = cand.spec
        fits = (
            int(task.output_dim) <= int(s.output_dim)
            if task.kind == "classification"
            else int(task.output_dim) == int(s.output_dim)
        )
        if tuple(s.input_shape) != tuple(task.input_shape) or not fits:
            raise DataError(
                f"model {name!r} takes inputs {tuple(s.input_shape)} with {s.output_dim} outputs, "
                f"but {who} has inputs {tuple(task.input_shape)} with {task.output_dim} outputs"
            )


def member_groups(
    candidates: Mapping[str, Candidate], configs: Sequence[Mapping[str, Any]]
) -> dict[str, list[int]]:
    """Member indices by their config's ``model`` (the first candidate where unset), in
    order of first appearance: one ``Population`` per group."""
    first = next(iter(candidates))
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        name = str(c.get("model") or first)
        if name not in candidates:
            raise ConfigError(
                f"config asks for model {name!r}, not a candidate ({', '.join(candidates)})"
            )
        groups.setdefault(name, []).append(i)
    return groups


def best_group(spans: Sequence[MemberSpan], members: list[list[int]]) -> tuple[int, Best]:
    """Which of ``spans`` (a unit's groups, whose members are ``members`` in ``configs``
    order) holds the best snapshot (the lowest, the earliest on ties, then the member first
    in ``configs``), and that snapshot (``member``: its index in the span)."""
    bests = [s.best() for s in spans]
    g = min(
        range(len(spans)),
        key=lambda j: (bests[j].val_loss, bests[j].at, members[j][bests[j].member]),
    )
    return g, bests[g]


def member_start(
    cand: Candidate, init: str, seed: int, member: int, dtype: torch.dtype
) -> PopulationState:
    """Member ``member``'s (index in ``configs``) one-member initial state, as
    ``run_population`` seeded it."""
    params = cand.params if init == "meta" else None
    return initial_state(cand.spec, params, [seed * 10_007 + member], dtype)


def group_start(
    cand: Candidate, init: str, seed: int, idx: list[int], dtype: torch.dtype
) -> InitState:
    """Member ``m`` of a group (whose members are ``idx`` in ``configs`` order) -> its
    one-member initial state (``member_start``), built only when a ``refit`` asks for it."""
    return lambda m: member_start(cand, init, seed, idx[m], dtype)


@dataclass
class Trained:
    """A unit whose training is done, to conclude: its task, its groups (``groups``: one span
    per model, whose members are ``members`` in ``configs`` order; whole populations alone,
    slices of packed ones in batched sweeps), its seed, its curves and the ``refit`` pick's
    training where done already (see ``picks.refit_pick``)."""

    task: Task
    groups: list[MemberSpan]
    members: list[list[int]]
    seed: int
    curves: Curves
    refitted: tuple[Params, int] | None = None

    @functools.cached_property
    def chosen(self) -> tuple[int, Best]:
        """``best_group`` of the unit, taken once (a snapshot copies its weights): the
        ``refit`` training and the conclusion both read it."""
        return best_group(self.groups, self.members)


def conclude(
    task: Task,
    candidates: Mapping[str, Candidate],
    pops: Sequence[Population],
    members: list[list[int]],
    *,
    init: str,
    seed: int,
    picks: Sequence[str],
    curves: Curves,
    t0: float,
    refitted: tuple[Params, int] | None = None,
) -> PopulationResult:
    """A finished run's result: the best snapshot of all groups (``pops``, whose members are
    ``members`` in ``configs`` order) and each final pick of the group holding it
    (``refitted``: the ``refit`` pick's training, done already; see ``picks.refit_pick``)."""
    spans = [MemberSpan.whole(p) for p in pops]
    unit = Trained(task, spans, members, seed, curves, refitted)
    return conclude_all([unit], candidates, init=init, picks=picks, t0=t0)[0]


def conclude_all(
    units: Sequence[Trained],
    candidates: Mapping[str, Candidate],
    *,
    init: str,
    picks: Sequence[str],
    t0: float,
) -> list[PopulationResult]:
    """``conclude`` of every unit, each rule's picks of all units tested together
    (``picks.final_picks``: one stacked evaluation per model and data shape)."""
    spans, starts, bests, results = [], [], [], []
    for u in units:
        g, best = u.chosen
        span, idx = u.groups[g], u.members[g]
        dtype = data_dtype(u.task.x_train)
        spans.append(span)
        starts.append(group_start(candidates[span.pop.name], init, u.seed, idx, dtype))
        bests.append(best)
        results.append(replace(best, member=idx[best.member]))  # its index in ``configs``
    tasks = [u.task for u in units]
    refits = [u.refitted for u in units]
    chosen = [
        final_picks(rule, spans, tasks, starts, init == "meta", refits, bests) for rule in picks
    ]
    wall = time.perf_counter() - t0
    return [
        PopulationResult(
            u.curves,
            best,
            chosen[0][j].test,
            wall,
            {r: c[j] for r, c in zip(picks, chosen, strict=True)},
        )
        for j, (u, best) in enumerate(zip(units, results, strict=True))
    ]


def merge_evaluations(evs: Sequence[Evaluation], members: list[list[int]]) -> Evaluation:
    """One evaluation of every group, members in their order in ``configs`` (exploit events
    name members by that index too)."""
    if len(evs) == 1:
        return evs[0]
    order = [i for idx in members for i in idx]  # the member of each concatenated column
    perm = torch.tensor(sorted(range(len(order)), key=lambda c: order[c]))

    def cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.cpu() for p in parts])[perm]

    acc = [e.accuracy for e in evs]
    events = [
        {**e, "src": idx[e["src"]], "dst": idx[e["dst"]]}
        for ev, idx in zip(evs, members, strict=True)
        for e in ev.events
    ]
    return Evaluation(
        evs[0].step,
        cat([e.taken for e in evs]),
        cat([e.loss for e in evs]),
        cat([a for a in acc if a is not None]) if all(a is not None for a in acc) else None,
        events,
        sum(e.seconds for e in evs),
    )


def run_strategy(
    ckpt: MetaCheckpoint,
    strategy: Strategy,
    task: Task,
    *,
    population: int,
    steps: int,
    interval: int,
    seed: int,
    rng: np.random.Generator,
    priors: Priors | None = None,
    candidate: str | None = None,
    picks: Sequence[str] | None = None,
) -> PopulationResult:
    """One strategy's population on ``task``, as sweeps and strategy selection run it: members'
    first configs from the strategy's prior (``priors``, else the checkpoint's) drawn with
    ``rng``, or the fixed default fine-tune of ``candidate``; final picks ``picks`` (default:
    the strategy's own)."""
    configs, prior, pbt = strategy_members(
        ckpt,
        strategy,
        task,
        population=population,
        steps=steps,
        rng=rng,
        priors=priors,
        candidate=candidate,
    )
    return run_population(
        task,
        ckpt.candidates,
        configs,
        init=strategy.init,
        steps=steps,
        interval=min(interval, steps),
        seed=seed,
        prior=prior,
        pbt=pbt,
        picks=tuple(picks) if picks is not None else (strategy.pick,),
    )


def strategy_members(
    ckpt: MetaCheckpoint,
    strategy: Strategy,
    task: Task,
    *,
    population: int,
    steps: int,
    rng: np.random.Generator,
    priors: Priors | None = None,
    candidate: str | None = None,
) -> tuple[list[dict[str, Any]], Prior, bool]:
    """A strategy's first member configs on ``task`` (drawn with ``rng``), the prior they
    explore within, and whether the population exploits (PBT): what ``run_strategy`` runs."""
    n_train = len(task.x_train)
    prior, portfolio = strategy_prior(ckpt, strategy, n_train, steps, priors)
    fixed = fixed_default(ckpt, n_train, steps, candidate)
    configs = member_configs(strategy, population, prior, portfolio, rng, fixed)
    return configs, prior, strategy.scheduler == "pbt" and not strategy.fixed
