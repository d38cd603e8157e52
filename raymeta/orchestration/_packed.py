"""A packed Tune trial's members: M fine-tuning members of one model, one vmapped computation.

No Ray here (the Tune trainable in ``_trainable.py`` wraps it), so the packing semantics are
testable on their own. Exact semantics of a packed trial with M members:

* member 0 trains with the trial's Tune config (the one PBT/PB2 explores); members 1..M-1 get
  configs drawn from the prior with a generator seeded by ``(run seed, trial index)``; every
  member's ``model`` is the trial's model (packed members share one architecture);
* each member has its own minibatch seed (``member_seeds``), so a member's trajectory is the
  same whether it is packed with others or trained alone (``PopulationTrainer`` guarantees it);
* config key ``steps`` (the priors' fixed fine-tuning budget) is ignored: every member trains
  for the run's per-member budget, and a per-member best-validation snapshot (weights at the
  lowest validation loss seen) is what the final model is chosen from;
* after every interval, if M >= 4, the worst ``M // 4`` members (by current validation loss,
  NaN worst, ties by index) each copy weights, optimizer state and step counter from a member
  of the best ``M // 4`` drawn with the trial's generator, and take the source's config
  perturbed within the prior (``Prior.perturb``). Member 0 copies weights too but keeps the
  Tune config, because Tune owns it. A member keeps its own minibatch seed and its own best
  snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raymeta.core.models import ModelSpec, build_model
from raymeta.core.population import MemberHParams, PopulationState, PopulationTrainer
from raymeta.core.train import derive_seed

Params = dict[str, torch.Tensor]
Config = dict[str, Any]
_P = 2147483647


def member_seeds(seed: int, trial_index: int, n: int) -> list[int]:
    """Minibatch seeds of a trial's members (distinct per run seed, trial and member)."""
    return [derive_seed(seed, trial_index, m) % _P for m in range(n)]


def scratch_params(spec: ModelSpec, seed: int) -> Params:
    """A seeded random initialisation of ``spec`` (the ``--init scratch`` baseline)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def initial_state(
    spec: ModelSpec, meta_params: Params | None, seeds: Sequence[int]
) -> PopulationState:
    """Every member starts at the meta-init, or (scratch) at its own seeded random init."""
    if meta_params is not None:
        names = [k for k, _ in build_model(spec).named_parameters()]
        return PopulationState.from_params({k: meta_params[k].float() for k in names}, len(seeds))
    inits = [scratch_params(spec, s) for s in seeds]
    return PopulationState.from_stacked({k: torch.stack([p[k] for p in inits]) for k in inits[0]})


def training_config(config: Config) -> Config:
    """The keys ``MemberHParams`` reads, without ``steps`` (the run's budget governs)."""
    return {k: v for k, v in config.items() if k != "steps" and k != "model"}


def exploit_worst(
    state: PopulationState,
    val: np.ndarray,
    k: int,
    rng: np.random.Generator,
    explore: Callable[[int, int], None],
) -> list[tuple[int, int]]:
    """The worst ``k`` members (by ``val``, ties by index) each copy a random member of the best
    ``k``; ``explore(src, dst)`` runs right after each copy (it sets ``dst``'s new config, so its
    random draws interleave with the source draws). Shared by packed Tune trials and the sweep's
    in-process PBT. Returns the ``(src, dst)`` pairs."""
    m = len(val)
    if k < 1 or m < 2:
        return []
    order = np.argsort(val, kind="stable")
    top, bottom = [int(i) for i in order[:k]], [int(i) for i in order[m - k :]]
    pairs = []
    for dst in bottom:
        src = int(rng.choice(top))
        state.copy_member(src, dst)
        explore(src, dst)
        pairs.append((src, dst))
    return pairs


@dataclass
class MemberGroup:
    """The state of one packed trial: weights, optimizer state, configs and best snapshots."""

    spec: ModelSpec
    kind: str
    configs: list[Config]
    seeds: list[int]
    state: PopulationState
    best_params: Params = field(default_factory=dict)
    best_val: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    last_val: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    last_acc: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.trainer = PopulationTrainer(build_model(self.spec), self.kind)
        n = len(self.configs)
        if not self.best_params:
            self.best_params = {k: v.clone() for k, v in self.state.params.items()}
        if self.best_val.numel() != n:
            self.best_val = torch.full((n,), math.inf, dtype=torch.float64)
        if self.last_val.numel() != n:
            self.last_val = torch.full((n,), math.inf, dtype=torch.float64)

    @property
    def n_members(self) -> int:
        return len(self.configs)

    def train(self, x: torch.Tensor, y: torch.Tensor, n_steps: int) -> int:
        """Train every member ``n_steps`` steps; returns the member-steps taken."""
        hp = MemberHParams.from_configs(
            [training_config(c) for c in self.configs], self.seeds, len(x)
        )
        before = int(self.state.step.sum())
        self.state = self.trainer.train(self.state, hp, x, y, n_steps)
        return int(self.state.step.sum()) - before

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Validation loss per member (NaN/inf -> inf); updates the best snapshots."""
        ev = self.trainer.evaluate(self.state.params, x, y)
        val = ev["loss"].double().to(self.best_val.device)
        val = torch.where(torch.isfinite(val), val, torch.full_like(val, math.inf))
        self.last_val = val
        self.last_acc = ev["accuracy"].double() if "accuracy" in ev else None
        better = val < self.best_val
        if bool(better.any()):
            for k, v in self.state.params.items():
                self.best_params[k][better] = v[better]
            self.best_val = torch.where(better, val, self.best_val)
        return val

    def exploit_quarter(
        self, rng: np.random.Generator, perturb: Callable[[Config, np.random.Generator], Config]
    ) -> list[dict[str, Any]]:
        """Worst quarter copies the best quarter (see the module docstring); returns the events."""
        events: list[dict[str, Any]] = []

        def explore(src: int, dst: int) -> None:
            old = self.configs[dst]
            new = old if dst == 0 else {**perturb(self.configs[src], rng), "model": self.spec.name}
            self.configs[dst] = dict(new)
            events.append(
                {"kind": "member_exploit", "src": src, "dst": dst, "old": old, "new": new}
            )

        exploit_worst(self.state, self.last_val.cpu().numpy(), self.n_members // 4, rng, explore)
        return events

    def best_member(self) -> int:
        """Index of the member with the lowest best-snapshot validation loss."""
        return int(torch.argmin(self.best_val).item())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything tensor-valued, for ``torch.save`` (loadable with ``weights_only=True``)."""
        out = {f"state.{k}": v.cpu() for k, v in self.state.state_dict().items()}
        out.update({f"best.{k}": v.cpu() for k, v in self.best_params.items()})
        out["best_val"] = self.best_val.cpu()
        out["last_val"] = self.last_val.cpu()
        return out

    def to(self, device: torch.device | str) -> MemberGroup:
        """Move weights, optimizer state and snapshots to ``device`` (in place; returns self)."""
        self.state = self.state.to(device)
        self.best_params = {k: v.to(device) for k, v in self.best_params.items()}
        self.best_val, self.last_val = self.best_val.to(device), self.last_val.to(device)
        return self

    @classmethod
    def from_tensors(
        cls,
        spec: ModelSpec,
        kind: str,
        configs: list[Config],
        seeds: list[int],
        t: dict[str, torch.Tensor],
    ) -> MemberGroup:
        state = PopulationState.from_state_dict(
            {k[6:]: v for k, v in t.items() if k.startswith("state.")}
        )
        best = {k[5:]: v.clone() for k, v in t.items() if k.startswith("best.")}
        return cls(
            spec, kind, configs, seeds, state, best, t["best_val"].clone(), t["last_val"].clone()
        )
