"""Sweep units in batches: one Ray task trains many units of one checkpoint and strategy.

A unit alone is a population of 8 members: a Ray task for it spends most of its time in Python
per optimizer step. ``plan_batches`` groups the units still to run by (checkpoint, strategy)
(so they share a model, a schedule and a step budget) and cuts each group into batches of at
most ``max_units``, small enough that every CPU gets several; ``run_batch`` (the Ray task)
builds each unit exactly as ``run.run_unit`` does and trains them packed
(``raymeta.finetune.batch.run_units``: per-member task data, each unit exploiting only among
its own members), returning the same rows keyed by unit. Every strategy a sweep runs (``pbt``
and ``random`` schedulers, fixed defaults, ``best``/``refit``/``soup`` picks, ``auto``) is
batched; units whose tasks differ in shape are packed apart inside the batch.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint
from raymeta.finetune.curves import final_rows
from raymeta.finetune.run import PopulationResult
from raymeta.finetune.strategy import AUTO, Strategy, default_candidate, resolve_auto
from raymeta.orchestration.sweep.config import SweepConfig
from raymeta.plugins import add_import_roots
from raymeta.results.sink import KeyedRows
from raymeta.tasks import Task, TaskFamily, make_family, resize_splits

BATCHES_PER_SLOT = 4  # batches per CPU slot, so uneven batches still keep every CPU busy


@functools.lru_cache(maxsize=8)
def cached_checkpoint(path: str) -> MetaCheckpoint:
    """A worker loads each checkpoint once, however many units or batches it runs."""
    return load_meta_checkpoint(path)


@dataclass
class UnitPlan:
    """What a unit runs: its checkpoint, resolved strategy, held-out task, steps and seed."""

    ckpt: MetaCheckpoint
    strategy: Strategy
    task: Task
    steps: int
    seed: int
    index: int  # the task's index among the held-out tasks

    def rng(self) -> np.random.Generator:
        """The generator its members' first configs are drawn with (as sweeps always drew)."""
        return np.random.default_rng([self.seed, self.index])


@functools.lru_cache(maxsize=8)
def _family(meta: str, options: str) -> TaskFamily:
    ckpt = cached_checkpoint(meta)
    opts = json.loads(options)
    return make_family(resize_splits(ckpt.family, opts, "sweep: task_options key"))


@functools.lru_cache(maxsize=8)
def _auto(meta: str) -> Strategy:
    """``auto`` of a checkpoint, resolved once per worker (it reads the priors' record)."""
    return resolve_auto(cached_checkpoint(meta))[0]


def plan_unit(unit: dict[str, Any], cfg: SweepConfig) -> UnitPlan:
    """Resolve one unit; ``auto`` runs what strategy selection measured: a default fine-tune
    as long as a member (``steps_per_member``), where a named fixed default runs
    ``fixed_steps``."""
    ckpt = cached_checkpoint(unit["meta"])
    family = _family(unit["meta"], json.dumps(cfg.task_options, sort_keys=True))
    task = family.task("test", int(unit["task"]))
    auto = unit["strategy"] == AUTO
    strat = _auto(unit["meta"]) if auto else Strategy.parse(unit["strategy"])
    steps = cfg.fixed_steps if strat.fixed and not auto else cfg.steps_per_member
    return UnitPlan(ckpt, strat, task, steps, int(unit["seed"]), int(unit["task"]))


def unit_rows(
    unit: dict[str, Any], cfg: SweepConfig, plan: UnitPlan, res: PopulationResult
) -> list[dict[str, Any]]:
    """A finished unit's result rows: every member's curve and the final test."""
    common = _common(unit, cfg, plan)
    return res.curves.rows(common) + _final(common, res)


def unit_columns(
    unit: dict[str, Any], cfg: SweepConfig, plan: UnitPlan, res: PopulationResult
) -> dict[str, list[Any]]:
    """``unit_rows`` as columns (``Curves.columns``, no dict per row): the same rows in the
    same order, without ``sweep``."""
    common = _common(unit, cfg, plan)
    cols = res.curves.columns(common)
    for row in _final(common, res):
        for c, values in cols.items():
            values.append(row[c])
    return cols


def _common(unit: dict[str, Any], cfg: SweepConfig, plan: UnitPlan) -> dict[str, Any]:
    return {
        "sweep": cfg.name,
        "strategy": unit["label"],
        "task": plan.task.task_id,
        "seed": plan.seed,
    }


def _final(common: dict[str, Any], res: PopulationResult) -> list[dict[str, Any]]:
    return final_rows(common, "best", res.member_steps, res.test, res.pick.config, res.wall_s)


def plan_batches(
    units: Sequence[dict[str, Any]], slots: int, max_units: int
) -> list[list[dict[str, Any]]]:
    """Units grouped by (checkpoint, strategy) and cut into near-equal batches of at most
    ``max_units`` and at most ``len(units) / (BATCHES_PER_SLOT * slots)`` (rounded up)."""
    size = max(1, min(max_units, math.ceil(len(units) / (BATCHES_PER_SLOT * max(1, slots)))))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for u in units:
        groups.setdefault((str(u["meta"]), str(u["strategy"])), []).append(u)
    out = []
    for g in groups.values():
        n = math.ceil(len(g) / size)
        out += [list(part) for part in np.array_split(np.array(g, dtype=object), n)]
    return out


def run_batch(
    units: list[dict[str, Any]], cfg: SweepConfig, import_roots: list[str] | None = None
) -> KeyedRows:
    """Run units of one checkpoint and strategy packed; returns each unit's rows by key (the
    rows ``run.run_unit`` returns for it, but for wall times) as one table, which the driver
    publishes without converting rows (``KeyedRows``). Pure, no Ray."""
    from raymeta.finetune.batch import Unit, run_units
    from raymeta.finetune.run import strategy_members
    from raymeta.priors import load_priors

    add_import_roots(import_roots or [])
    torch.set_num_threads(1)
    plans = [plan_unit(u, cfg) for u in units]
    first = plans[0]
    strat, steps = first.strategy, first.steps
    if any(p.ckpt is not first.ckpt or (p.strategy, p.steps) != (strat, steps) for p in plans):
        raise ValueError("a batch holds units of one checkpoint, strategy and step budget")
    priors = load_priors(first.ckpt) if strat.prior == "learned" else None
    # the fixed default's candidate, read once (each unit would parse priors.json for it)
    candidate = first.ckpt.candidate(default_candidate(first.ckpt)).name
    packed = []
    pbt = False
    for p in plans:
        configs, prior, pbt = strategy_members(
            p.ckpt,
            strat,
            p.task,
            population=cfg.population,
            steps=p.steps,
            rng=p.rng(),
            priors=priors,
            candidate=candidate,
        )
        packed.append(Unit(p.task, configs, p.seed, prior))
    results = run_units(
        packed,
        first.ckpt.candidates,
        init=strat.init,
        steps=first.steps,
        interval=min(cfg.interval, first.steps),
        pbt=pbt,
        picks=(strat.pick,),
    )
    cols: dict[str, list[Any]] = {}
    keys = []
    for u, p, r in zip(units, plans, results, strict=True):
        part = unit_columns(u, cfg, p, r)
        for c, values in part.items():
            cols.setdefault(c, []).extend(values)
        keys.append((u["key"], len(part["value"])))
    return KeyedRows.of_columns(cfg.name, cols, keys)
