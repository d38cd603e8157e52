"""Final picks: which weights a finished population hands back, the same in sweeps, strategy
selection and ``raymeta tune``.

A population ends with one best snapshot per member (its lowest validation loss). Picking the
lowest of them all (``best``) is the obvious rule, and on tiny validation splits the wrong one:
with 10 val points, the lowest of members x reports is often a snapshot that fits those 10
points by luck (issue 15 measured val MSE 0.008 and test MSE 2.64 on a task where predicting 0
scores 0.56). The rules:

* ``best``: the lowest validation snapshot of any member (earliest, then lowest index, on ties);
* ``refit``: the best snapshot's config, trained again from that member's initial weights on
  train + val together for as many steps as the snapshot had trained (one extra member run; a
  full-batch config stays full-batch on the larger set). The val split chose the config and
  the stopping step, and then adds its rows to the training data. A refit that fits train +
  val worse than the snapshot did (a PBT member's config, tuned for weights that other
  configs trained, can diverge from the initial weights) is dropped for the snapshot;
* ``soup``: the uniform average of the weights of the best ``ceil(SOUP_FRACTION x members)``
  members (at least 2) of the best snapshot's model: members fine-tuned from one meta-init stay
  in one basin, and their average is smoother than any one of them (Wortsman et al. 2022,
  "model soups"). From scratch, members start in different basins, so ``soup`` is ``best``
  there, and so it is for a population of one.

Which rule a family should use is measured, not assumed: ``raymeta priors fit`` scores every
rule on meta-val tasks' test splits (``raymeta.finetune.select``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from raymeta.errors import ConfigError
from raymeta.finetune.population import Best, Population
from raymeta.finetune.step import PopulationState
from raymeta.tasks import Task

PICKS = ("best", "refit", "soup")
SOUP_FRACTION = 0.25

Params = dict[str, torch.Tensor]
InitState = Callable[[int], PopulationState]  # member index -> its one-member initial state


@dataclass
class Pick:
    """What a rule hands back: weights, the config that trained them, their test metrics and
    the member-steps the rule itself spent (``refit`` only)."""

    rule: str
    params: Params
    config: dict[str, Any]
    test: dict[str, float]
    extra_steps: int = 0
    members: int = 1  # snapshots averaged (soup)
    fallback: bool = False  # refit failed on train + val: the best snapshot was kept


def check_pick(rule: str) -> str:
    if rule not in PICKS:
        raise ConfigError(f"unknown final pick {rule!r} (choose {', '.join(PICKS)})")
    return rule


def soup_members(pop: Population) -> list[int]:
    """The members a soup averages: the best ``ceil(SOUP_FRACTION x n)`` (at least 2) by their
    best snapshot's val loss, finite ones only (ties by the population's own order)."""
    val = pop.best_val.cpu().tolist()
    at = pop.best_at.cpu().tolist()
    order = sorted(
        (i for i in range(pop.n_members) if math.isfinite(val[i])),
        key=lambda i: (val[i], at[i], i),
    )
    return order[: soup_size(pop.n_members)]


def soup_params(pop: Population, members: Sequence[int]) -> Params:
    """The uniform average of ``members``' best snapshots."""
    idx = torch.tensor(list(members), device=pop.best_val.device)
    return {k: v[idx].mean(dim=0) for k, v in pop.best_params.items()}


def train_and_val(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's labelled rows: train + val, the data a refit trains on."""
    return torch.cat([task.x_train, task.x_val]), torch.cat([task.y_train, task.y_val])


def refit_config(best: Best, n_train: int, n_rows: int) -> tuple[dict[str, Any], int]:
    """The config a refit of ``best`` trains (``n_rows`` rows: train + val) and its steps."""
    cfg = dict(best.config)
    if cfg.get("batch_size") is None or int(cfg["batch_size"]) >= n_train:
        cfg["batch_size"] = n_rows  # full batch stays full batch
    return cfg, int(cfg.get("steps") or 0)


def refit_params(
    pop: Population,
    best: Best,
    start: PopulationState,
    n_train: int,
    data: tuple[torch.Tensor, torch.Tensor],
) -> tuple[Params, int]:
    """``best``'s config trained from ``start`` on ``data`` (train + val; ``n_train`` rows of it
    are the train split) for the snapshot's steps; returns the weights and the steps spent."""
    x, y = data
    cfg, steps = refit_config(best, n_train, len(x))
    if steps < 1:
        return {k: v[0].clone() for k, v in start.params.items()}, 0
    one = Population(
        pop.spec,
        pop.kind,
        pop.name,
        [cfg],
        [pop.seeds[best.member]],
        start.to(x.device),
        horizon=steps,
        keep_best=False,
    )
    taken = one.train(x, y, steps)
    return {k: v[0].detach().clone() for k, v in one.state.params.items()}, int(taken.sum())


def refit_pick(
    pop: Population,
    start: PopulationState | None,
    task: Task,
    refitted: tuple[Params, int] | None = None,
) -> Pick:
    """The ``refit`` rule for ``pop``'s best snapshot, trained from ``start`` (or the weights
    and steps of that training, ``refitted``: batched sweeps train many units' refits packed).

    A refit that fits train + val, the data it trained on, worse than the snapshot it
    replaces (or not at all: NaN, inf) has a config that diverged or under-trained from the
    initial weights (a PBT member's config was tuned for weights trained under other
    configs): the snapshot is kept (``fallback``). Uses no test data."""
    best = pop.best()
    data = train_and_val(task)
    if refitted is None:
        if start is None:
            raise ValueError("refit_pick needs the initial weights or the refit's result")
        refitted = refit_params(pop, best, start, len(task.x_train), data)
    params, spent = refitted
    new = pop.score(params, *data)["test_loss"]
    failed = not math.isfinite(new) or new > pop.score(best.params, *data)["test_loss"]
    kept = best.params if failed else params
    test = pop.score(kept, task.x_test, task.y_test)
    return Pick("refit", kept, dict(best.config), test, spent, fallback=failed)


def soup_size(n_members: int) -> int:
    """Snapshots a soup averages: ``ceil(SOUP_FRACTION x n)``, at least 2."""
    return max(2, math.ceil(SOUP_FRACTION * n_members))


def final_pick(
    rule: str,
    pop: Population,
    task: Task,
    init_state: InitState,
    soup_ok: bool,
    refitted: tuple[Params, int] | None = None,
) -> Pick:
    """Apply ``rule`` to ``pop`` (the population holding the best snapshot) and test the result
    once. ``init_state(m)`` gives member ``m``'s initial weights (for ``refit``); ``soup_ok`` is
    False where members do not share an init (scratch): ``soup`` is then ``best``.
    ``refitted``: see ``refit_pick``."""
    check_pick(rule)
    if rule == "refit":
        start = init_state(pop.best_member()) if refitted is None else None
        return refit_pick(pop, start, task, refitted)
    best = pop.best()
    if rule == "soup" and soup_ok:
        members = soup_members(pop)
        if len(members) >= 2:
            params = soup_params(pop, members)
            test = pop.score(params, task.x_test, task.y_test)
            return Pick(rule, params, dict(best.config), test, 0, len(members))
    return Pick(
        rule, best.params, dict(best.config), pop.score(best.params, task.x_test, task.y_test)
    )
