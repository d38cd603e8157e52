"""The population step's fast paths (``StepPlan``) give the general path's numbers (float64).

The general path (``GENERAL``) is the one checked against the looped ``torch.optim`` reference
in ``test_population.py``; each plan below only skips work its members do not need."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raymeta.core.models import ModelSpec, build_model
from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.step import (
    GENERAL,
    MemberHParams,
    PopulationState,
    PopulationTrainer,
    StepPlan,
)

N_TRAIN, N_STEPS = 9, 7
SGD_FULL: list[dict[str, Any]] = [
    {"lr": 0.05},
    {"lr": 0.02, "weight_decay": 0.1},
    {"lr": 0.1, "adapt": "head"},
    {"lr": 0.04, "batch_size": 100},  # larger than the data: full batch
]
SGD_MINI = [*SGD_FULL, {"lr": 0.03, "batch_size": 4}, {"lr": 0.06, "batch_size": 2}]
MIXED = [*SGD_MINI, {"lr": 0.01, "optimizer": "adam", "weight_decay": 0.05}]
AT_LIMIT = [{**c, "steps": s} for c, s in zip(SGD_FULL, (1, 3, 7, 2), strict=True)]


def _setup(
    configs: list[dict[str, Any]],
    per_member: bool,
    data_seed: int = 3,
    seeds: list[int] | None = None,
) -> tuple[PopulationTrainer, PopulationState, MemberHParams, torch.Tensor, torch.Tensor]:
    """A float64 MLP population on ``N_TRAIN`` examples (shared, or one set per member);
    member ``i``'s minibatch seed is ``seeds[i]`` (default ``7 + i``). Also used by
    tests/test_population_mixed.py."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (2,), 1, {"widths": [6, 5]})).double()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(data_seed)
    shape = (len(configs), N_TRAIN, 2) if per_member else (N_TRAIN, 2)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True))
    seeds = [7 + i for i in range(len(configs))] if seeds is None else seeds[: len(configs)]
    hp = MemberHParams.from_configs(configs, seeds, N_TRAIN)
    state = PopulationState.from_params(init, len(configs))
    return PopulationTrainer(model, "regression"), state, hp, x, y


def _close(
    a: PopulationState, b: PopulationState, rtol: float = 1e-12, atol: float = 1e-14
) -> None:
    for part in ("params", "m", "v"):
        for k, want in getattr(b, part).items():
            torch.testing.assert_close(getattr(a, part)[k], want, rtol=rtol, atol=atol)
    assert torch.equal(a.step, b.step)


@pytest.mark.parametrize(
    ("configs", "plan"),
    [
        (SGD_FULL, StepPlan(adam=False, minibatch=False, head_only=True, decay=True)),
        (SGD_MINI, StepPlan(adam=False, minibatch=True, head_only=True, decay=True)),
        (MIXED, StepPlan(adam=True, minibatch=True, head_only=True, decay=True)),
        (AT_LIMIT, StepPlan(adam=False, minibatch=False, head_only=True, decay=True)),
        ([{"lr": 0.05}, {"lr": 0.01}], StepPlan(False, False, False, False)),
    ],
    ids=["sgd-full-batch", "sgd-minibatch", "mixed-sgd-adam", "some-at-limit", "plain-sgd"],
)
@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_fast_path_equals_general_path(
    configs: list[dict[str, Any]], plan: StepPlan, per_member: bool
) -> None:
    trainer, state, hp, x, y = _setup(configs, per_member)
    assert StepPlan.of(hp, N_TRAIN) == plan
    before = {k: v.clone() for k, v in state.params.items()}
    fast = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    general = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL)
    _close(fast, general)
    # the general step under the members' own plan (what a compiled trainer runs) skips work
    # without changing any number either
    ungrouped = dataclasses.replace(plan, grouped=False)
    _close(trainer.train(state, hp, x, y, N_STEPS, per_member, plan=ungrouped), general)
    assert not torch.equal(fast.params["head.weight"], state.params["head.weight"])
    # the input state is untouched (the SGD path updates only tensors it made in place)
    assert torch.equal(state.step, torch.zeros_like(state.step))
    assert all(torch.equal(state.params[k], v) for k, v in before.items())
    # and resuming is the same as one call (a Population trains between evaluations)
    half = trainer.train(state, hp, x, y, 3, per_member_data=per_member)
    _close(trainer.train(half, hp, x, y, N_STEPS - 3, per_member_data=per_member), fast)


def test_members_at_their_limit_match_the_looped_reference() -> None:
    trainer, state, hp, x, y = _setup(AT_LIMIT, per_member=False)
    out = trainer.train(state, hp, x, y, N_STEPS)
    assert out.step.tolist() == [1, 3, 7, 2]
    for i, cfg in enumerate(AT_LIMIT):
        init = {k: v[i] for k, v in state.params.items()}
        want = ref_train_member(trainer.model, "regression", init, cfg, 7 + i, x, y, N_STEPS)
        for k, w in want.items():
            torch.testing.assert_close(out.params[k][i], w, rtol=1e-9, atol=1e-11)


def test_sgd_member_is_the_same_packed_with_adam_members() -> None:
    """Packing independence across paths: an SGD member trained among SGD members (in-place
    SGD path) equals the same member trained among Adam members (general path), moments too."""
    trainer, state, hp, x, y = _setup(MIXED, per_member=False)
    together = trainer.train(state, hp, x, y, N_STEPS)
    sgd = list(range(len(SGD_MINI)))
    alone = trainer.train(state.index(sgd), hp.index(sgd), x, y, N_STEPS)
    _close(together.index(sgd), alone)


def test_bench_population_cli_writes_records(tmp_path: Path) -> None:
    from raymeta.cli.main import main

    out = tmp_path / "population.json"
    argv = ["bench", "population", "--smoke-test", "--members", "3", "--repeats", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["impl"] for r in records} == {"raymeta", "bare"}
    for r in records:
        assert r["members"] == 3 and r["member_steps_per_s"] > 0 and r["peak_mb"] > 0
        assert r["max_abs_diff_vs_bare"] < 1e-5  # the same SGD, float32 rounding apart
    assert [r["ratio_to_bare"] for r in records if r["impl"] == "bare"] == [1.0]


def test_bench_population_mixed_members(tmp_path: Path) -> None:
    """``--members-config mixed``: raymeta's members mix optimizers and the rest (as priors
    draw them); the ceiling stays the bare SGD population, with nothing to compare weights to."""
    from raymeta.bench.population import mixed_configs
    from raymeta.cli.main import main

    configs = mixed_configs(64, 10)
    assert {c["optimizer"] for c in configs} == {"sgd", "adam"}
    assert {c["adapt"] for c in configs} == {"all", "head"}
    assert any(c["batch_size"] < 10 for c in configs) and any(
        c["batch_size"] == 10 for c in configs
    )
    out = tmp_path / "mixed.json"
    argv = ["bench", "population", "--smoke-test", "--members", "3", "--repeats", "1"]
    assert main([*argv, "--members-config", "mixed", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["config"] for r in records} == {"mixed"}
    assert all(r["max_abs_diff_vs_bare"] is None for r in records)
