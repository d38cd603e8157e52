"""The final pick of a ``raymeta tune`` run (``raymeta.finetune.picks``), across Tune trials.

``best`` is the lowest-val snapshot of any member of any trial; ``refit`` trains its config
again on train + val from the member's initial weights (meta-init, or the member's own seeded
scratch init) in the driver; ``soup`` averages the best snapshots of the best
``ceil(SOUP_FRACTION x members)`` members (at least 2) of the winning model over all trials'
final checkpoints (meta-init runs only: scratch members start in different basins).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from raymeta.finetune.picks import Pick, refit_pick, soup_size
from raymeta.finetune.population import Population, data_dtype, initial_state
from raymeta.orchestration.tune.plan import TunePlan
from raymeta.orchestration.tune.trainable import load_trial


def tune_pick(plan: TunePlan, pop: Population, results: list[Any]) -> Pick:
    """Apply the plan's final pick to the run: ``pop`` holds the best snapshot."""
    task, rule = plan.task, plan.request.pick
    if rule == "refit":
        cand = plan.setup.candidates[pop.name]
        start = initial_state(
            cand.spec,
            cand.params if plan.setup.init == "meta" else None,
            [pop.seeds[pop.best_member()] + 1],  # the trainable's scratch seed of that member
            data_dtype(task.x_train),
        )
        return refit_pick(pop, start, task)
    best = pop.best()
    if rule == "soup" and plan.setup.init == "meta":
        snaps = _snapshots(plan, pop.name, results)
        top = sorted(snaps, key=lambda s: s[0])[: soup_size(len(snaps))]
        if len(top) >= 2:
            params = {n: torch.stack([p[n] for _, p in top]).mean(dim=0) for n in top[0][1]}
            test = pop.score(params, task.x_test, task.y_test)
            return Pick(rule, params, dict(best.config), test, 0, len(top))
    return Pick(
        rule, best.params, dict(best.config), pop.score(best.params, task.x_test, task.y_test)
    )


def _snapshots(
    plan: TunePlan, model: str, results: list[Any]
) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """(val loss, weights) of every member's best snapshot of ``model`` in every trial's
    latest checkpoint (finite val losses only)."""
    out = []
    for r in results:
        if r.checkpoint is None:
            continue
        with r.checkpoint.as_directory() as d:
            p, _ = load_trial(Path(d), plan.setup)
        if p.name != model:
            continue
        vals = p.best_val.tolist()
        for m, v in enumerate(vals):
            if math.isfinite(v):
                out.append((float(v), {k: t[m].detach().clone() for k, t in p.best_params.items()}))
    return out
