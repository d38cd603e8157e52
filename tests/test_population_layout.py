"""A ``Population`` keeps its rows grouped by member kind across ``train`` calls
(``finetune.layout``): the layout's permutation and moves (property-based), and a population
whose members change kind between calls (PBT copies of another kind's config) against the
same schedule run on plain ``PopulationState``s through the trainer's general path, in
float64: weights, moments, steps, evaluations, snapshots and checkpoints in member order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import test_population_fast as fast  # tests/ is on sys.path (rootdir-less test modules)
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.core.models import ModelSpec
from raymeta.finetune.layout import RowLayout
from raymeta.finetune.population import ExploitRule, Population
from raymeta.finetune.step import GENERAL, MemberHParams, PopulationState

# one to five calls' member kinds (``step.member_keys``: 0-7) of a population of 1-40
CALLS = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.lists(st.integers(0, 7), min_size=n, max_size=n), min_size=1, max_size=5)
)


@settings(max_examples=200, deadline=None)
@given(CALLS)
def test_arrange_groups_rows_by_key_moving_only_misplaced_rows(calls: list[list[int]]) -> None:
    n = len(calls[0])
    layout = RowLayout(n)
    held = torch.arange(n)  # a tensor the rows index: which member each row holds
    for keys in calls:
        k = torch.tensor(keys)
        before = held.clone()
        misplaced = int((k[before] != torch.sort(k[before]).values).sum())
        moves = layout.arrange(k)
        if moves is None:
            assert misplaced == 0
        else:
            dst, src = moves
            assert sorted(dst.tolist()) == sorted(src.tolist())  # a permutation of the moved
            assert dst.numel() == misplaced  # only rows outside their key's run move
            held.index_copy_(0, dst, held.index_select(0, src))
        rows = torch.arange(n) if layout.rows is None else layout.rows
        assert torch.equal(held, rows)
        assert bool((k[rows][1:] >= k[rows][:-1]).all())  # grouped, in ascending key order
        if layout.pos is not None:
            assert torch.equal(layout.pos[rows], torch.arange(n))
        else:
            assert torch.equal(rows, torch.arange(n))
    with pytest.raises(ValueError, match="keys for a layout"):
        layout.arrange(torch.zeros(n + 1, dtype=torch.long))


# members of every kind, interleaved; PBT below copies configs across kinds
MIXED: list[dict[str, Any]] = [
    {"lr": 0.01, "optimizer": "adam", "weight_decay": 0.05},
    {"lr": 0.05},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 4, "adapt": "head"},
    {"lr": 0.03, "weight_decay": 0.1, "batch_size": 3},
    {"lr": 0.04, "optimizer": "adam", "steps": 7},  # stops early, in a later call
    {"lr": 0.1, "adapt": "head"},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 2, "weight_decay": 0.01},
    {"lr": 0.06, "batch_size": 100},
    {"lr": 0.03, "optimizer": "adam", "adapt": "head", "batch_size": 5},
    {"lr": 0.02, "batch_size": 1, "adapt": "head", "weight_decay": 0.03},
]
SEEDS = [31 + 5 * i for i in range(len(MIXED))]
SPEC = ModelSpec("mlp", (2,), 1, {"widths": [6, 5]})


def _flip(config: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """An explore step that changes a member's kind: the other optimizer and adapt."""
    out = dict(config)
    out["optimizer"] = "sgd" if config.get("optimizer") == "adam" else "adam"
    out["adapt"] = "all" if config.get("adapt") == "head" else "head"
    out["lr"] = float(config["lr"]) * float(rng.uniform(0.8, 1.2))
    return out


def _reference(
    configs: list[dict[str, Any]],
    calls: list[int],
    x: torch.Tensor,
    y: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    pop_like: Population,
) -> tuple[PopulationState, list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
    """The schedule below on a plain ``PopulationState`` through the general masked step:
    train, evaluate, and (between calls) the worst quarter copy a member of the best quarter
    and take its config flipped, with ``exploit_worst``'s draws."""
    trainer = pop_like.trainer
    state = PopulationState.from_params(
        {k: v[0] for k, v in pop_like.state.params.items()}, len(configs)
    )
    cfgs = [dict(c) for c in configs]
    rng = np.random.default_rng(0)
    losses, taken = [], []
    best = {k: v.clone() for k, v in state.params.items()}
    best_val = torch.full((len(cfgs),), float("inf"), dtype=torch.float64)
    for i, n_steps in enumerate(calls):
        hp = MemberHParams.from_configs(cfgs, SEEDS, fast.N_TRAIN)
        before = state.step.clone()
        state = trainer.train(state, hp, x, y, n_steps, True, plan=GENERAL)
        taken.append(state.step - before)
        loss = trainer.evaluate(state.params, xv, yv, True)["loss"]
        losses.append(loss)
        for m in range(len(cfgs)):  # each member's weights at its lowest val loss so far
            if loss[m] < best_val[m]:
                best_val[m] = loss[m]
                for k in best:
                    best[k][m] = state.params[k][m]
        if i < len(calls) - 1:
            order = np.argsort(loss.numpy(), kind="stable")
            k = len(cfgs) // 4
            top = [int(j) for j in order[:k]]
            for dst in [int(j) for j in order[len(cfgs) - k :]]:
                src = top[int(rng.integers(0, k))]
                state.copy_member(src, dst)
                cfgs[dst] = {**_flip(cfgs[src], rng), "model": "mlp"}
    return state, losses, taken, best


@pytest.mark.parametrize("checkpoint_at", [None, 2], ids=["straight", "checkpointed"])
def test_members_changing_kind_keep_their_numbers(checkpoint_at: int | None) -> None:
    trainer, state, _, x, y = fast._setup(MIXED, per_member=True, data_seed=11, seeds=SEEDS)
    g = torch.Generator().manual_seed(12)
    xv = torch.randn(len(MIXED), 6, 2, generator=g, dtype=torch.float64)
    yv = torch.sin(xv.sum(-1, keepdim=True))

    def make(st_: PopulationState) -> Population:
        pop = Population(SPEC, "regression", "mlp", MIXED, SEEDS, st_, horizon=None)
        pop.trainer = trainer  # the float64 model
        return pop

    pop = make(state)
    calls = [3, 2, 4, 3]
    want_state, want_losses, want_taken, want_best = _reference(MIXED, calls, x, y, xv, yv, pop)
    rng = np.random.default_rng(0)
    rule = ExploitRule(fraction=0.25)
    grouped = changed = 0
    for i, n_steps in enumerate(calls):
        if checkpoint_at == i:  # a trial's save and restore: the rows come back in member order
            saved, best_configs = pop.tensors(), [dict(c) for c in pop.best_configs]
            configs = [dict(c) for c in pop.configs]
            pop = make(state)
            pop.configs = configs
            pop.restore(saved, best_configs)
        taken = pop.train(x, y, n_steps, per_member_data=True)
        grouped += pop._layout.rows is not None
        assert torch.equal(taken, want_taken[i])
        loss = pop.evaluate(xv, yv, per_member_data=True)["loss"]
        torch.testing.assert_close(loss, want_losses[i], rtol=1e-11, atol=1e-13)
        if i < len(calls) - 1:
            events = pop.exploit(rng, _flip, rule)
            changed += sum(e["old"].get("optimizer") != e["new"].get("optimizer") for e in events)
    assert changed >= 2  # members changed kind between calls
    assert grouped >= 2  # the rows were out of member order for some calls
    # snapshots: each member's lowest val loss, read in member order
    best = torch.stack(want_losses).min(dim=0).values
    torch.testing.assert_close(pop.best_val, best, rtol=1e-11, atol=1e-13)
    for k, v in want_best.items():
        torch.testing.assert_close(pop.best_params[k], v, rtol=1e-11, atol=1e-13)
    fast._close(pop.state, want_state, rtol=1e-11, atol=1e-13)  # back in member order
    assert pop._layout.rows is None


def test_a_population_without_snapshots_reads_each_members_own_row() -> None:
    """``best(m)`` of a population that keeps no snapshots is member ``m``'s current weights,
    wherever its row is."""
    trainer, state, hp, x, y = fast._setup(MIXED, per_member=True, data_seed=13, seeds=SEEDS)
    pop = Population(SPEC, "regression", "mlp", MIXED, SEEDS, state, keep_best=False)
    pop.trainer = trainer
    pop.train(x, y, 4, per_member_data=True)
    assert pop._layout.rows is not None
    want = trainer.train(state, hp, x, y, 4, True, plan=GENERAL)
    for m in range(len(MIXED)):
        for k, v in pop.best(m).params.items():
            torch.testing.assert_close(v, want.params[k][m], rtol=1e-11, atol=1e-13)
