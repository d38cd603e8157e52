"""In-process population fine-tuning of one task: the unit of work of a sweep.

A strategy is ``INIT+PRIOR[+SCHEDULER]``: INIT is ``meta`` (the meta-checkpoint's weights) or
``scratch`` (seeded random init), PRIOR is ``learned`` / ``broad`` (where member configs come
from) or ``fixed-default`` (MAML-style: one config, SGD at the meta-training inner lr for
``fixed_steps`` steps), SCHEDULER is ``pbt`` or ``random`` (independent members, best by val).

All members of a model candidate are ONE vmapped ``PopulationTrainer`` computation. PBT here is
the same rule a packed Tune trial uses: every ``interval`` steps the worst quarter of members
copy weights and optimizer state from a random member of the best quarter and perturb their
hyperparameters within the prior. No Ray in this module: the sweep ships it to Ray tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import Candidate
from raymeta.core.models import build_model
from raymeta.core.population import MemberHParams, PopulationState, PopulationTrainer
from raymeta.errors import ConfigError
from raymeta.orchestration._packed import exploit_worst, scratch_params
from raymeta.priors import Prior
from raymeta.tasks import Task

INITS = ("meta", "scratch")
PRIORS = ("learned", "broad", "fixed-default")
SCHEDULERS = ("pbt", "random")


@dataclass(frozen=True)
class Strategy:
    init: str
    prior: str
    scheduler: str

    @classmethod
    def parse(cls, name: str) -> Strategy:
        parts = name.split("+")
        if len(parts) == 2 and parts[1] == "fixed-default":
            parts.append("random")
        if (
            len(parts) != 3
            or parts[0] not in INITS
            or parts[1] not in PRIORS
            or parts[2] not in SCHEDULERS
        ):
            raise ConfigError(
                f"unknown strategy {name!r} (use INIT+PRIOR+SCHEDULER with INIT in {INITS}, PRIOR in "
                f"{PRIORS[:2]}, SCHEDULER in {SCHEDULERS}, or INIT+fixed-default)"
            )
        return cls(*parts)

    @property
    def name(self) -> str:
        if self.prior == "fixed-default":
            return f"{self.init}+fixed-default"
        return f"{self.init}+{self.prior}+{self.scheduler}"


@dataclass
class FinetuneResult:
    """Curves are one dict per (interval, member): member, step (cumulative population
    member-steps), member_step (steps that member spent itself), val_loss (+ val_accuracy),
    wall_s."""

    curves: list[dict[str, Any]] = field(default_factory=list)
    best_config: dict[str, Any] = field(default_factory=dict)
    best_val: float = float("inf")
    test: dict[str, float] = field(default_factory=dict)
    member_steps: int = 0
    wall_s: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    best_params: dict[str, torch.Tensor] = field(default_factory=dict)


def _exploit(
    val: np.ndarray,
    state: PopulationState,
    configs: list[dict[str, Any]],
    prior: Prior,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Worst quarter (at least one member) copies a random best-quarter member and explores."""
    events: list[dict[str, Any]] = []

    def explore(src: int, dst: int) -> None:
        new = prior.perturb(configs[src], rng)
        events.append({"kind": "exploit", "src": src, "dst": dst, "old": configs[dst], "new": new})
        configs[dst] = new

    exploit_worst(state, val, max(1, len(val) // 4), rng, explore)
    return events


def run_population(
    task: Task,
    cand: Candidate,
    configs: list[dict[str, Any]],
    *,
    init: str,
    budget: int,
    interval: int,
    seed: int,
    prior: Prior | None = None,
    pbt: bool = False,
) -> FinetuneResult:
    """Fine-tune ``len(configs)`` members for ``budget`` steps each; val every ``interval``."""
    if budget < 1 or interval < 1:
        raise ConfigError(f"budget and interval must be >= 1 (got {budget}, {interval})")
    if pbt and prior is None:
        raise ConfigError("PBT needs a prior to explore within")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    configs = [dict(c) for c in configs]
    m = len(configs)
    model = build_model(cand.spec)
    trainer = PopulationTrainer(model, task.kind)
    if init == "meta":
        base = {k: cand.params[k].float() for k, _ in model.named_parameters()}
        state = PopulationState.from_params(base, m)
    else:
        stacked = [scratch_params(cand.spec, seed * 10_007 + i) for i in range(m)]
        state = PopulationState.from_stacked(
            {k: torch.stack([s[k] for s in stacked]) for k in stacked[0]}
        )
    seeds = [seed * 1_000_003 + i for i in range(m)]
    res = FinetuneResult()
    done = 0
    own = np.zeros(m, dtype=np.int64)
    while done < budget:
        n = min(interval, budget - done)
        # The run's budget is every member's horizon; a config's own ``steps`` (a fixed
        # fine-tuning length the priors also describe) would only idle members mid-run.
        hp = MemberHParams.from_configs(
            [{**c, "steps": budget} for c in configs], seeds, len(task.x_train)
        )
        before = state.step.clone()
        state = trainer.train(state, hp, task.x_train, task.y_train, n)
        done += n
        spent = (state.step - before).numpy()
        own += spent
        res.member_steps += int(spent.sum())
        ev = trainer.evaluate(state.params, task.x_val, task.y_val)
        val = ev["loss"].double().numpy()
        val = np.where(np.isfinite(val), val, np.inf)
        for i in range(m):
            row = {
                "member": i,
                "step": res.member_steps,
                "member_step": int(own[i]),
                "val_loss": float(val[i]),
                "wall_s": time.perf_counter() - t0,
            }
            if "accuracy" in ev:
                row["val_accuracy"] = float(ev["accuracy"][i])
            res.curves.append(row)
        i_best = int(np.argmin(val))
        if val[i_best] < res.best_val:
            res.best_val = float(val[i_best])
            res.best_config = dict(configs[i_best])
            res.best_params = {k: v[i_best].clone() for k, v in state.params.items()}
        if pbt and done < budget and prior is not None:
            res.events += [
                {**e, "step": res.member_steps} for e in _exploit(val, state, configs, prior, rng)
            ]
    if not res.best_params:  # every member diverged: report the first one
        res.best_params = {k: v[0].clone() for k, v in state.params.items()}
        res.best_config = dict(configs[0])
    one = {k: v.unsqueeze(0) for k, v in res.best_params.items()}
    test = trainer.evaluate(one, task.x_test, task.y_test)
    res.test = {f"test_{k}": float(v[0]) for k, v in test.items()}
    res.wall_s = time.perf_counter() - t0
    return res


def strategy_configs(
    strategy: Strategy,
    population: int,
    prior: Prior | None,
    portfolio: list[dict[str, Any]],
    rng: np.random.Generator,
    fixed_default: dict[str, Any],
) -> list[dict[str, Any]]:
    """Member configs: the fixed default, or the portfolio first (learned) then prior samples."""
    if strategy.prior == "fixed-default":
        return [dict(fixed_default)]
    if prior is None:
        raise ConfigError(f"strategy {strategy.name} needs a prior")
    head = [dict(c) for c in portfolio[:population]] if strategy.prior == "learned" else []
    return head + prior.sample(population - len(head), rng)
