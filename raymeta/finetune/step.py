"""The population step: many fine-tuning members, one vmapped computation.

A *member* is one fine-tuning run (weights, optimizer state, hyperparameters). Members that
share a model architecture are stacked along a leading dimension and trained together with
``vmap``; their hyperparameters are tensors (``MemberHParams``, one per entry of the
vocabulary in ``hparams.py``), so a population mixing learning rates, weight decays, optimizers
(SGD / Adam), batch sizes, step budgets and "head only" adaptation is still ONE computation.
This is the pure functional core; ``population.Population`` is the stateful runner around it
that priors fitting, sweeps and Ray Tune trials all use.

Randomness (minibatch selection) comes from a counter-based hash of ``(member seed, member
step, example index)``, so a member's trajectory does not depend on which other members it is
packed with: training members together or one by one gives the same results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from raymeta.core.losses import accuracy, per_example_loss
from raymeta.core.models import HEAD_PREFIX
from raymeta.errors import ConfigError
from raymeta.finetune.hparams import ADAPT, OPTIMIZERS, member_tensors

Params = dict[str, torch.Tensor]
_P = 2147483647  # 2**31 - 1
_B1, _B2, _EPS = 0.9, 0.999, 1e-8
_ADAM, _HEAD = OPTIMIZERS.index("adam"), ADAPT.index("head")


@dataclass
class MemberHParams:
    """Per-member hyperparameters: one tensor per vocabulary entry (``hparams.HPARAMS``), one
    element per member, plus each member's minibatch seed. Categorical values are indices into
    their choices (``hparams.OPTIMIZERS``, ``hparams.ADAPT``)."""

    values: dict[str, torch.Tensor]
    seed: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.values[name]

    @classmethod
    def from_configs(
        cls,
        configs: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        n_train: int,
        horizon: int | None = None,
    ) -> MemberHParams:
        """From config dicts (missing keys take the vocabulary's defaults); ``horizon``
        replaces every member's ``steps`` (see ``hparams.member_tensors``)."""
        if len(configs) != len(seeds):
            raise ConfigError("one seed per member is required")
        return cls(
            member_tensors(configs, n_train, horizon),
            torch.tensor([int(s) % _P for s in seeds]),
        )

    def index(self, idx: torch.Tensor | slice | list[int]) -> MemberHParams:
        return MemberHParams({k: v[idx] for k, v in self.values.items()}, self.seed[idx])

    def to(self, device: torch.device | str) -> MemberHParams:
        return MemberHParams(
            {k: v.to(device) for k, v in self.values.items()}, self.seed.to(device)
        )


@dataclass
class PopulationState:
    """Stacked member weights, Adam moments and per-member step counts."""

    params: Params
    m: Params
    v: Params
    step: torch.Tensor

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor], n_members: int) -> PopulationState:
        """Every member starts from the same (unstacked) ``params``."""
        stacked = {
            k: v.detach().unsqueeze(0).repeat(n_members, *([1] * v.dim()))
            for k, v in params.items()
        }
        return cls.from_stacked(stacked)

    @classmethod
    def from_stacked(cls, stacked: Mapping[str, torch.Tensor]) -> PopulationState:
        p = {k: v.detach().clone() for k, v in stacked.items()}
        n = next(iter(p.values())).shape[0]
        zeros = {k: torch.zeros_like(v) for k, v in p.items()}
        return cls(
            p,
            zeros,
            {k: torch.zeros_like(v) for k, v in p.items()},
            torch.zeros(n, dtype=torch.int64, device=next(iter(p.values())).device),
        )

    @property
    def n_members(self) -> int:
        return int(self.step.shape[0])

    def index(self, idx: torch.Tensor | slice | list[int]) -> PopulationState:
        def sel(d: Params) -> Params:
            return {k: v[idx].clone() for k, v in d.items()}

        return PopulationState(sel(self.params), sel(self.m), sel(self.v), self.step[idx].clone())

    def copy_member(self, src: int, dst: int) -> None:
        """Member ``dst`` takes ``src``'s weights, optimizer state and step (a PBT exploit)."""
        for d in (self.params, self.m, self.v):
            for t in d.values():
                t[dst] = t[src]
        self.step[dst] = self.step[src]

    def to(self, device: torch.device | str) -> PopulationState:
        """A copy on ``device`` (packed trials train on a GPU, checkpoints live on the CPU)."""

        def mv(d: Params) -> Params:
            return {k: v.to(device) for k, v in d.items()}

        return PopulationState(mv(self.params), mv(self.m), mv(self.v), self.step.to(device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"params.{k}": v for k, v in self.params.items()}
        out.update({f"m.{k}": v for k, v in self.m.items()})
        out.update({f"v.{k}": v for k, v in self.v.items()})
        out["step"] = self.step
        return out

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> PopulationState:
        def part(prefix: str) -> Params:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

        return cls(part("params."), part("m."), part("v."), sd["step"])


def hash_uniform(seed: torch.Tensor, step: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Counter-based uniform numbers in (0, 1): pure integer arithmetic, vmap-safe, no overflow."""
    h = (seed % _P * 1000003 + step % _P) % _P
    h = (h * 48271 + idx * 69621 + 12345) % _P
    for _ in range(3):
        h = (h ^ (h >> 13)) % _P
        h = (h * 48271 + 11) % _P
    return (h.double() + 0.5) / _P


class PopulationTrainer:
    """Trains stacked members of one model architecture on one task (or one task each)."""

    def __init__(self, model: nn.Module, kind: str):
        self.model, self.kind = model, kind
        names = [n for n, _ in model.named_parameters()]
        self.head_mask = {n: n.startswith(HEAD_PREFIX) for n in names}

    def _grads(
        self,
        p: Params,
        t: torch.Tensor,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        d: int | None,
    ) -> tuple[Params, torch.Tensor]:
        """Per-member minibatch gradients and the minibatch mask's dtype.

        The forward is vmapped over members; the backward is plain autograd on the sum of the
        member losses (members are independent, so that is every member's own gradient). This
        avoids ``torch.func.grad``, whose first call in a process imports ``torch._dynamo``
        (seconds per Tune trial process), and its per-step transform overhead."""
        n = x.shape[1] if d == 0 else x.shape[0]
        idx = torch.arange(n, device=x.device).unsqueeze(0)
        scores = hash_uniform(hp.seed.unsqueeze(1), t.unsqueeze(1), idx)
        rank = torch.argsort(torch.argsort(scores, dim=1), dim=1)
        mdt = x.dtype if x.is_floating_point() else torch.float32
        batch = hp["batch_size"]
        mask = (rank < batch.unsqueeze(1)).to(mdt)
        denom = batch.clamp(min=1).to(mdt)

        def member_loss(
            q: Params, xx: torch.Tensor, yy: torch.Tensor, mm: torch.Tensor, dd: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(self.model, q, (xx,))
            return (per_example_loss(self.kind, out, yy) * mm).sum() / dd

        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
            losses = vmap(member_loss, in_dims=(0, d, d, 0, 0))(leaves, x, y, mask, denom)
            g = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, g, strict=True)), mask

    def _step(
        self,
        p: Params,
        m: Params,
        v: Params,
        t: torch.Tensor,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        d: int | None,
        adam: torch.Tensor,
        head_only: torch.Tensor,
    ) -> tuple[Params, Params, Params, torch.Tensor]:
        """One SGD / Adam step of every member, on the stacked tensors (per-member scalars are
        broadcast over each parameter's trailing dimensions). ``adam`` and ``head_only`` are the
        members' optimizer and adapt choices as masks, computed once per ``train`` call."""
        g, mask = self._grads(p, t, hp, x, y, d)
        dt = mask.dtype
        limit = hp["steps"]
        active = (t < limit).to(dt)
        tn = t + (t < limit).long()
        tf = tn.clamp(min=1).to(dt)
        lr, wd = hp["lr"].to(dt), hp["weight_decay"].to(dt)
        body_keep = 1.0 - head_only.to(dt)
        new_p, new_m, new_v = {}, {}, {}
        for k in p:

            def per(vec: torch.Tensor, k: str = k) -> torch.Tensor:
                return vec.reshape(-1, *([1] * (p[k].dim() - 1)))

            keep = (
                per(body_keep)
                if not self.head_mask[k]
                else torch.ones((), dtype=dt, device=x.device)
            )
            gk = (g[k] + per(wd) * p[k]) * keep
            mk = _B1 * m[k] + (1 - _B1) * gk
            vk = _B2 * v[k] + (1 - _B2) * gk * gk
            adam_upd = (mk / per(1 - _B1**tf)) / (torch.sqrt(vk / per(1 - _B2**tf)) + _EPS)
            upd = torch.where(per(adam), adam_upd, gk)
            on = per(active)
            new_p[k] = p[k] - per(lr) * on * upd
            new_m[k] = torch.where(on > 0, mk, m[k])
            new_v[k] = torch.where(on > 0, vk, v[k])
        return new_p, new_m, new_v, tn

    def train(
        self,
        state: PopulationState,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        n_steps: int,
        per_member_data: bool = False,
    ) -> PopulationState:
        """Run ``n_steps`` steps for every member (members past their ``max_steps`` stay put)."""
        d = 0 if per_member_data else None
        hp = hp.to(x.device)
        adam, head_only = hp["optimizer"] == _ADAM, hp["adapt"] == _HEAD
        p, m, v, t = state.params, state.m, state.v, state.step
        with torch.no_grad():
            for _ in range(n_steps):
                p, m, v, t = self._step(p, m, v, t, hp, x, y, d, adam, head_only)
        return PopulationState(p, m, v, t)

    def evaluate(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, per_member_data: bool = False
    ) -> dict[str, torch.Tensor]:
        """Per-member mean loss (and accuracy for classification) on ``(x, y)``."""
        d = 0 if per_member_data else None

        def one(q: Params, xx: torch.Tensor, yy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = functional_call(self.model, q, (xx,))
            acc = accuracy(out, yy) if self.kind == "classification" else torch.zeros(())
            return per_example_loss(self.kind, out, yy).mean(), acc

        with torch.no_grad():
            loss, acc = vmap(one, in_dims=(0, d, d))(params, x, y)
        out = {"loss": loss}
        if self.kind == "classification":
            out["accuracy"] = acc
        return out
