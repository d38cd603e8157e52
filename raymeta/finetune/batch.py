"""Many units' populations as one: the batched form of ``run.run_population``.

A sweep runs thousands of small populations (8 members, one task each) of the same model.
Trained one by one, each optimizer step is a Python loop iteration for 8 members; packed, one
step trains every member of every unit, each on its own task's data (per-member data, as
priors fitting packs tasks x configs). The numbers do not change:

* members keep their ``run_population`` seeds (minibatches ``seed * 1_000_003 + i``, scratch
  init ``seed * 10_007 + i``) and member randomness is counter-based, so a member's trajectory
  does not depend on who it is packed with;
* a unit's members of one model are one contiguous slice of that model's packed
  ``Population``; after each evaluation but the last, each unit exploits within its own slice
  with its own generator ``default_rng(seed)``, in the order ``run_population`` uses (its
  groups in order), so PBT never crosses units; every unit's exploit of one evaluation is made
  at once (``exploit.exploit_groups``: the same draws, configs and events);
* the best snapshot and the final picks are taken per unit from its slice of each packed
  ``Population`` (``picks.MemberSpan``, read in place), through the same code as alone
  (``run.conclude_all``), every unit's picks tested in one stacked evaluation per model.

Units whose tasks differ in split shapes or dtype cannot share per-member tensors: they are
packed by shape (``run_units`` groups them), never mixed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import Candidate
from raymeta.core.models import footprint
from raymeta.finetune.curves import Curves
from raymeta.finetune.exploit import Group, apply_copies, exploit_groups
from raymeta.finetune.picks import MemberSpan, refit_config, train_and_val
from raymeta.finetune.population import (
    SWEEP_RULE,
    Evaluation,
    Population,
    data_dtype,
    every,
    initial_state,
    run_schedule,
)
from raymeta.finetune.run import (
    PopulationResult,
    Trained,
    check_run,
    conclude_all,
    member_groups,
    member_start,
    merge_evaluations,
)
from raymeta.finetune.step import MemberHParams, PopulationState
from raymeta.memory import member_bytes as estimate_member_bytes
from raymeta.priors import Prior
from raymeta.tasks import Task

Params = dict[str, torch.Tensor]
BATCH_MEMORY = 1 << 30  # bytes one packed population may take (weights, moments, data)
MAX_BATCH_MEMBERS = 16384


@dataclass
class Unit:
    """One population of a batch: what ``run_population`` would be called with."""

    task: Task
    configs: list[dict[str, Any]]
    seed: int
    prior: Prior | None = None


class PackedPopulation(Population):
    """A ``Population`` whose hyperparameter tensors are patched, not rebuilt, after exploits:
    a packed population of thousands of members changes a few configs per evaluation, and
    rebuilding every member's tensors each time costs more than the training between."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packed_hp: tuple[int, MemberHParams] | None = None
        self.changed: set[int] = set()

    def set_config(self, member: int, config: Mapping[str, Any]) -> None:
        self.configs[member] = dict(config)
        self.changed.add(member)

    def hparams(self, n_train: int) -> MemberHParams:
        if self.packed_hp is None or self.packed_hp[0] != n_train:
            hp = MemberHParams.from_configs(self.configs, self.seeds, n_train, self.horizon)
            self.packed_hp, self.changed = (n_train, hp), set()
        hp = self.packed_hp[1]
        if self.changed:
            idx = sorted(self.changed)
            part = MemberHParams.from_configs(
                [self.configs[i] for i in idx], [self.seeds[i] for i in idx], n_train, self.horizon
            )
            at = torch.tensor(idx)
            for k, v in part.values.items():
                hp.values[k][at] = v
            hp.seed[at] = part.seed
            self.changed = set()
        return hp


def member_bytes(spec: Any, task: Task) -> int:
    """One packed member's estimated peak bytes (``raymeta.memory.member_bytes``: weights,
    moments, snapshot, temporaries, activations at its largest split and its task data)."""
    n_params, acts = footprint(spec)
    data = sum(t.numel() * t.element_size() for t in (task.x_train, task.y_train))
    data += sum(t.numel() * t.element_size() for t in (task.x_val, task.y_val))
    batch = max(int(task.x_train.shape[0]), int(task.x_val.shape[0]))
    item = data_dtype(task.x_train).itemsize
    return estimate_member_bytes(n_params, data, acts * batch, item)


def batch_members(spec: Any, task: Task, budget: int = BATCH_MEMORY) -> int:
    """Members one packed population of ``spec`` on tasks like ``task`` may hold."""
    return max(1, min(MAX_BATCH_MEMBERS, budget // max(1, member_bytes(spec, task))))


def _slice_eval(ev: Evaluation, lo: int, hi: int, events: list[dict[str, Any]]) -> Evaluation:
    acc = ev.accuracy[lo:hi] if ev.accuracy is not None else None
    return Evaluation(ev.step, ev.taken[lo:hi], ev.loss[lo:hi], acc, events, ev.seconds)


def run_units(
    units: Sequence[Unit],
    candidates: Mapping[str, Candidate],
    *,
    init: str,
    steps: int,
    interval: int,
    pbt: bool = False,
    picks: Sequence[str] = ("best",),
    max_members: int | None = None,
) -> list[PopulationResult]:
    """``[run_population(u.task, candidates, u.configs, seed=u.seed, prior=u.prior, ...) for u
    in units]``, the same numbers, trained packed (module docstring): units with equal task
    shapes share one ``Population`` per model, at most ``max_members`` members each (default:
    ``batch_members``)."""
    for u in units:
        check_run(steps, interval, init, pbt, u.prior, u.configs, picks)
    out: dict[int, PopulationResult] = {}
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, u in enumerate(units):
        t = u.task
        key = (t.kind, t.x_train.dtype, t.y_train.dtype, t.x_train.shape, t.y_train.shape)
        by_shape.setdefault(key + (t.x_val.shape, t.y_val.shape), []).append(i)
    for idx in by_shape.values():
        first = units[idx[0]]
        spec = next(iter(candidates.values())).spec
        cap = max_members or batch_members(spec, first.task)
        chunk: list[int] = []
        size = 0
        for i in idx:  # chunks of whole units, at most ``cap`` members (one unit may exceed it)
            n = len(units[i].configs)
            if chunk and size + n > cap:
                out.update(_run_packed(units, chunk, candidates, init, steps, interval, pbt, picks))
                chunk, size = [], 0
            chunk.append(i)
            size += n
        if chunk:
            out.update(_run_packed(units, chunk, candidates, init, steps, interval, pbt, picks))
    return [out[i] for i in range(len(units))]


def _run_packed(
    units: Sequence[Unit],
    which: list[int],
    candidates: Mapping[str, Candidate],
    init: str,
    steps: int,
    interval: int,
    pbt: bool,
    picks: Sequence[str],
) -> dict[int, PopulationResult]:
    """Units ``which`` (equal task shapes) trained as one population per model."""
    t0 = time.perf_counter()
    groups = {i: member_groups(candidates, units[i].configs) for i in which}
    # per model: the (unit, configs indices) segments and where each starts
    layout: dict[str, list[tuple[int, list[int], int]]] = {}
    where: dict[int, list[tuple[str, int, int]]] = {}  # unit -> its slices, in group order
    for i in which:
        for name, idx in groups[i].items():
            segs = layout.setdefault(name, [])
            lo = segs[-1][2] + len(segs[-1][1]) if segs else 0
            segs.append((i, idx, lo))
            where.setdefault(i, []).append((name, lo, lo + len(idx)))
    tasks = [units[i].task for i in which]
    row = {i: r for r, i in enumerate(which)}
    xt, yt, xv, yv = (
        torch.stack([getattr(t, k) for t in tasks])
        for k in ("x_train", "y_train", "x_val", "y_val")
    )
    dtype = data_dtype(tasks[0].x_train)
    pops: dict[str, Population] = {}
    data: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, segs in layout.items():
        cand = candidates[name]
        scratch = [units[i].seed * 10_007 + j for i, idx, _ in segs for j in idx]
        seeds = [units[i].seed * 1_000_003 + j for i, idx, _ in segs for j in idx]
        configs = [units[i].configs[j] for i, idx, _ in segs for j in idx]
        state = (
            initial_state(cand.spec, cand.params, scratch, dtype)
            if init == "meta"
            else initial_state(cand.spec, None, scratch, dtype)
        )
        pops[name] = PackedPopulation(
            cand.spec, tasks[0].kind, name, configs, seeds, state, horizon=steps
        )
        rows = torch.tensor([row[i] for i, idx, _ in segs for _ in idx])
        data[name] = (xt[rows], yt[rows], xv[rows], yv[rows])
    rngs = {i: np.random.default_rng(units[i].seed) for i in which}
    stops = every(min(interval, steps), steps)
    runs = [
        run_schedule(pops[name], data[name][:2], data[name][2:], stops, per_member_data=True)  # type: ignore[arg-type]
        for name in layout
    ]
    curves = {i: Curves(started=t0) for i in which}
    explorers = {i: u.prior for i in which if pbt and (u := units[i]).prior is not None}
    exploiting = [Group(i, name, lo, hi) for i in explorers for name, lo, hi in where[i]]
    for s_i, evs in enumerate(zip(*runs, strict=True)):
        by_model = dict(zip(layout, evs, strict=True))
        logs: dict[str, list[tuple[int, int]]] = {}
        events: dict[tuple[int, str], list[dict[str, Any]]] = {}  # (unit, model) -> events
        if s_i < len(stops) - 1 and exploiting:
            found = exploit_groups(pops, exploiting, rngs, explorers, SWEEP_RULE, logs)
            events = {(g.unit, g.name): e for g, e in zip(exploiting, found, strict=True)}
        for i in which:
            parts = [
                _slice_eval(by_model[name], lo, hi, events.get((i, name), []))
                for name, lo, hi in where[i]
            ]
            curves[i].add(merge_evaluations(parts, list(groups[i].values())))
        for name, log in logs.items():
            apply_copies(pops[name], log)
    trained = {
        i: Trained(
            units[i].task,
            [MemberSpan(pops[name], lo, hi) for name, lo, hi in where[i]],
            list(groups[i].values()),
            units[i].seed,
            curves[i],
        )
        for i in which
    }
    if "refit" in picks:
        for i, refitted in packed_refits(trained, candidates, init).items():
            trained[i].refitted = refitted
    done = conclude_all([trained[i] for i in which], candidates, init=init, picks=picks, t0=t0)
    return dict(zip(which, done, strict=True))


def packed_refits(
    trained: Mapping[int, Trained],
    candidates: Mapping[str, Candidate],
    init: str,
) -> dict[int, tuple[Params, int]]:
    """The ``refit`` pick's training of every unit ``trained`` holds, packed: one population
    per model of one member per unit, each on its own task's train + val, each for its own
    snapshot's steps. Returns unit -> (weights, steps spent), what ``picks.refit_params``
    gives it alone (a one-member population on the same data: the same numbers up to the
    rounding of packed matmuls). A refit is one member run per unit: alone it is a Python loop
    of that many steps per unit, which costs a sweep of ``auto`` units more than all its
    populations."""
    jobs: dict[str, list[tuple[int, dict[str, Any], int, PopulationState, Task]]] = {}
    out: dict[int, tuple[Params, int]] = {}
    meta_starts: dict[tuple[str, torch.dtype], PopulationState] = {}  # seed-free: built once
    for i, unit in trained.items():
        task = unit.task
        g, best = unit.chosen
        span = unit.groups[g]
        n_rows = len(task.x_train) + len(task.x_val)
        cfg, steps = refit_config(best, len(task.x_train), n_rows)
        member = unit.members[g][best.member]
        dtype = data_dtype(task.x_train)
        name = span.pop.name
        start = meta_starts.get((name, dtype)) if init == "meta" else None
        if start is None:
            start = member_start(candidates[name], init, unit.seed, member, dtype)
            if init == "meta":
                meta_starts[(name, dtype)] = start
        if steps < 1:
            out[i] = ({k: v[0].clone() for k, v in start.params.items()}, 0)
        else:
            jobs.setdefault(name, []).append((i, cfg, span.seed(best.member), start, task))
    for name, js in jobs.items():
        first = js[0][3].params
        state = PopulationState.from_stacked(
            {k: torch.cat([j[3].params[k] for j in js]) for k in first}
        )
        spec = candidates[name].spec
        configs, seeds = [j[1] for j in js], [j[2] for j in js]
        pop = Population(spec, js[0][4].kind, name, configs, seeds, state, keep_best=False)
        data = [train_and_val(j[4]) for j in js]
        x, y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
        taken = pop.train(x, y, max(int(c["steps"]) for c in configs), per_member_data=True)
        for r, j in enumerate(js):
            params = {k: v[r].clone() for k, v in pop.state.params.items()}
            out[j[0]] = (params, int(taken[r]))
    return out
