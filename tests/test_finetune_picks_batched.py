"""Batched final picks (``picks.score_all``, ``picks.final_picks``) equal the per-unit path.

A sweep batch concludes many units at once: each unit's picks are taken from its slice of a
packed population (``MemberSpan``) and tested in one stacked evaluation, each unit on its own
test data. The reference here is independent of that: each unit's members trained as a
population of their own, picked by ``final_pick`` and scored by ``Population.score`` one by
one, in float64.
"""

from __future__ import annotations

import pytest
import torch

from raymeta.core.models import ModelSpec
from raymeta.finetune.picks import MemberSpan, final_pick, final_picks, score_all
from raymeta.finetune.population import Population, initial_state, scratch_params
from raymeta.tasks import Task

SPECS = {
    "mlp-regression": (ModelSpec("mlp", (3,), 2, {"widths": [6, 5]}), "regression"),
    "mlp-classification": (ModelSpec("mlp", (4,), 3, {"widths": [7]}), "classification"),
    "conv4-classification": (ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 4}), "classification"),
}
CONFIGS = [{"lr": lr, "batch_size": 4, "steps": 6} for lr in (0.003, 0.01, 0.03, 0.1)]


def _task(spec: ModelSpec, kind: str, seed: int) -> Task:
    """A random float64 task of ``spec``'s shapes (12 train, 6 val, 9 test rows)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn((n, *spec.input_shape), generator=g, dtype=torch.float64)
        if kind == "regression":
            return x, torch.randn((n, spec.output_dim), generator=g, dtype=torch.float64)
        return x, torch.randint(0, spec.output_dim, (n,), generator=g)

    (xt, yt), (xv, yv), (xs, ys) = split(12), split(6), split(9)
    return Task(f"t{seed}", xt, yt, xv, yv, xs, ys, kind, spec.output_dim)  # type: ignore[arg-type]


def _meta(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The shared init every member starts from (a seeded build, the same on every call)."""
    return {k: v.double() for k, v in scratch_params(spec, 0).items()}


def _trained(spec: ModelSpec, kind: str, members: list[int], task: Task) -> Population:
    """Members ``members`` of ``CONFIGS`` x 2 (seeds = their indices) from one shared init,
    trained and evaluated three times on ``task``."""
    meta = _meta(spec)
    configs = [CONFIGS[m % len(CONFIGS)] for m in members]
    state = initial_state(spec, meta, members, torch.float64)
    pop = Population(spec, kind, "m", configs, members, state, horizon=6)
    for _ in range(3):
        pop.train(task.x_train, task.y_train, 2)
        pop.evaluate(task.x_val, task.y_val)
    return pop


def _with_test(task: Task, other: Task) -> Task:
    return Task(
        task.task_id,
        task.x_train,
        task.y_train,
        task.x_val,
        task.y_val,
        other.x_test,
        other.y_test,
        task.kind,
        task.output_dim,
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks-of-3"])
@pytest.mark.parametrize("name", list(SPECS))
def test_score_all_equals_one_score_per_job(
    name: str, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member's weights, each on another task's test data, scored stacked: the scores
    of ``Population.score`` one by one (a job alone in its shape group is that call), also
    when a memory budget cuts a group into chunks."""
    spec, kind = SPECS[name]
    if chunked:
        import raymeta.finetune.picks as picks

        # the budget of 3 jobs of the 8-job group (``score_all``'s own estimate)
        x = _task(spec, kind, 10).x_test
        one = (picks.footprint(spec)[1] * len(x) + x.numel()) * x.element_size()
        monkeypatch.setattr(picks, "SCORE_MEMORY", 3 * one)
    pop = _trained(spec, kind, list(range(8)), _task(spec, kind, 0))
    tests = [_task(spec, kind, 10 + j) for j in range(8)]
    odd = _task(spec, kind, 99)
    odd.x_test, odd.y_test = odd.x_test[:5], odd.y_test[:5]  # a shape of its own
    jobs = [
        (pop, {k: v[j % 8] for k, v in pop.best_params.items()}, t.x_test, t.y_test)
        for j, t in enumerate([*tests, odd])
    ]
    calls: list[int] = []
    real = pop.trainer.evaluate

    def counted(params: dict[str, torch.Tensor], *args: object, **kw: object) -> object:
        calls.append(len(next(iter(params.values()))))
        return real(params, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pop.trainer, "evaluate", counted)
    got = score_all(jobs)
    monkeypatch.undo()
    # the 8 jobs of one shape stacked (3 + 3 + 2 under the budget), the odd one alone
    assert sorted(calls) == ([1, 2, 3, 3] if chunked else [1, 8])
    for job, g in zip(jobs, got, strict=True):
        want = job[0].score(*job[1:])
        assert (
            g.keys()
            == want.keys()
            == ({"test_loss", "test_accuracy"} if kind == "classification" else {"test_loss"})
        )
        assert g == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("rule", ["best", "soup", "refit"])
@pytest.mark.parametrize("name", ["mlp-regression", "conv4-classification"])
def test_final_picks_of_spans_equal_final_pick_of_each_population(name: str, rule: str) -> None:
    """Three units of 4, 2 and 2 members packed in one population, each tested on its own
    task's test split: ``final_picks`` over their spans gives each unit the pick
    ``final_pick`` gives the unit's members trained as a population of their own."""
    spec, kind = SPECS[name]
    train = _task(spec, kind, 0)
    cuts = [(0, 4), (4, 6), (6, 8)]
    packed = _trained(spec, kind, list(range(8)), train)
    tasks = [_with_test(train, _task(spec, kind, 20 + j)) for j in range(len(cuts))]

    def init_state(lo: int):  # noqa: ANN202
        meta = _meta(spec)
        return lambda m: initial_state(spec, meta, [lo + m], torch.float64)

    got = final_picks(
        rule,
        [MemberSpan(packed, lo, hi) for lo, hi in cuts],
        tasks,
        [init_state(lo) for lo, _ in cuts],
        True,
    )
    for (lo, hi), task, pk in zip(cuts, tasks, got, strict=True):
        alone = _trained(spec, kind, list(range(lo, hi)), train)
        want = final_pick(rule, alone, task, init_state(lo), True)
        assert (pk.rule, pk.config, pk.members) == (want.rule, want.config, want.members)
        assert (pk.extra_steps, pk.fallback) == (want.extra_steps, want.fallback)
        for k, v in want.params.items():
            assert v.dtype == torch.float64
            torch.testing.assert_close(pk.params[k], v, rtol=1e-12, atol=1e-14)
        assert pk.test == pytest.approx(want.test, rel=1e-12, abs=1e-15)
        assert pk.test == pytest.approx(alone.score(want.params, task.x_test, task.y_test))
    if rule == "soup":
        assert [pk.members for pk in got] == [2, 2, 2]
