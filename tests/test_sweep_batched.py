"""Batched sweep units give exactly the rows of units run alone, and batches are planned whole."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.finetune.batch import Unit, run_units
from raymeta.finetune.run import run_population, strategy_members
from raymeta.finetune.strategy import Strategy
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.sweep.run import run_unit
from raymeta.tasks import Task, make_family

STRATEGIES = ["meta+fixed-default+refit", "scratch+broad+pbt"]  # the float32 sweep path


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batched") / "meta"
    tr = meta_train(MetaTrainConfig(steps=20, meta_batch=4, val_every=20))
    save_meta_checkpoint(out, tr.to_checkpoint())
    return out


def _f64(task: Task) -> Task:
    t = {k: getattr(task, k) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    return replace(task, **{k: v.double() if v.is_floating_point() else v for k, v in t.items()})


@pytest.mark.parametrize(
    "name",
    [
        "meta+broad+pbt+soup",
        pytest.param("scratch+broad+pbt+refit", marks=pytest.mark.slow),
        pytest.param("meta+broad+random", marks=pytest.mark.slow),
    ],
)
def test_packed_units_equal_alone_float64(meta_dir: Path, name: str) -> None:
    """Float64, against the independent path (``run_population`` once per unit): 3 tasks x 2
    seeds packed in one population give every unit the same curves, exploits, configs, best
    snapshot and final test as alone (PBT exploits stay inside each unit)."""
    ckpt = load_meta_checkpoint(meta_dir)
    family = make_family(ckpt.family)
    strat = Strategy.parse(name)
    units, alone = [], []
    for t in range(3):
        task = _f64(family.task("test", t))
        for seed in (0, 7):
            configs, prior, pbt = strategy_members(
                ckpt, strat, task, population=4, steps=12, rng=np.random.default_rng([seed, t])
            )
            units.append(Unit(task, configs, seed, prior))
            kw = dict(init=strat.init, steps=12, interval=3, pbt=pbt, picks=(strat.pick,))
            alone.append(
                run_population(task, ckpt.candidates, configs, seed=seed, prior=prior, **kw)
            )
    packed = run_units(units, ckpt.candidates, **kw)
    assert strat.scheduler != "pbt" or any(r.curves.events for r in alone)
    for a, b in zip(alone, packed, strict=True):
        assert b.curves.events == a.curves.events
        assert b.curves.member_steps == a.curves.member_steps
        assert torch.allclose(
            torch.tensor(b.curves.loss), torch.tensor(a.curves.loss), rtol=1e-12, atol=0
        )
        assert (b.best.member, b.best.at, b.best.config) == (
            a.best.member,
            a.best.at,
            a.best.config,
        )
        for k, v in a.pick.params.items():
            assert v.dtype == torch.float64
            assert torch.allclose(b.pick.params[k], v, rtol=1e-12, atol=1e-14)
        assert b.member_steps == a.member_steps
        assert b.test == pytest.approx(a.test, rel=1e-12)


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without their wall times (a batch's clock is shared by its units)."""
    return [{k: v for k, v in r.items() if k not in ("wall_s", "value")} for r in rows]


def test_run_batch_rows_equal_run_unit(meta_dir: Path) -> None:
    """The sweep's Ray task body (float32 sinusoid tasks as the sweep builds them): every row a
    batch returns is the row of ``run_unit`` (values to float32 rounding: packed and lone
    matmuls round differently)."""
    cfg = parse_sweep(
        {
            "meta": [str(meta_dir)],
            "strategies": STRATEGIES,
            "tasks": 2,
            "seeds": [0, 5],
            "population": 4,
            "steps_per_member": 8,
            "interval": 2,
        }
    )
    units = cfg.units()
    for batch in ([u for u in units if u["strategy"] == s] for s in STRATEGIES):  # 4 each
        got = run_batch(batch, cfg).rows()
        assert list(got) == [u["key"] for u in batch]
        for u in batch:
            alone = run_unit(u, cfg)
            assert _comparable(got[u["key"]]) == _comparable(alone), u["key"]
            assert any(r["metric"] == "test_loss" for r in alone)
            for x, y in zip(got[u["key"]], alone, strict=True):
                assert x["value"] == pytest.approx(y["value"], rel=1e-4, abs=1e-6)


def test_plan_batches_whole_groups() -> None:
    """Batches never mix checkpoints or strategies, hold at most max_units, cover every unit
    once, and split a group evenly so every CPU slot gets several."""
    units = [
        {"key": f"{m}/{s}/{t}/0", "meta": m, "strategy": s, "task": t, "seed": 0}
        for m in ("a", "b")
        for s in ("x", "y")
        for t in range(10)
    ]
    batches = plan_batches(units, slots=2, max_units=4)
    assert sorted(u["key"] for b in batches for u in b) == sorted(u["key"] for u in units)
    assert all(len({(u["meta"], u["strategy"]) for u in b}) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [3] * 8 + [4] * 4  # 10 = 4 + 3 + 3 per group
    assert [len(b) for b in plan_batches(units, slots=1, max_units=100)] == [10] * 4
    assert len(plan_batches(units[:1], slots=8, max_units=100)) == 1


def test_one_member_units_exploit_nothing_as_alone(meta_dir: Path) -> None:
    """A unit (or a unit's share of one model) of a single member: PBT has no one to copy, as
    in ``run_population`` (this raised in a batch of such units before)."""
    ckpt = load_meta_checkpoint(meta_dir)
    family = make_family(ckpt.family)
    strat = Strategy.parse("meta+broad+pbt")
    units, alone = [], []
    kw = dict(init=strat.init, steps=6, interval=2, pbt=True, picks=(strat.pick,))
    for t in range(2):
        task = _f64(family.task("test", t))
        configs, prior, _ = strategy_members(
            ckpt, strat, task, population=1, steps=6, rng=np.random.default_rng([3, t])
        )
        units.append(Unit(task, configs, 3, prior))
        alone.append(run_population(task, ckpt.candidates, configs, seed=3, prior=prior, **kw))
    packed = run_units(units, ckpt.candidates, **kw)
    for a, b in zip(alone, packed, strict=True):
        assert b.curves.events == a.curves.events == []
        assert b.test == pytest.approx(a.test, rel=1e-12)
