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
    """Stacked member weights, Adam moments and per-member step counts. The moments move only
    on a member's own Adam steps (an SGD member's stay as they were)."""

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


@dataclass(frozen=True)
class StepPlan:
    """What a ``train`` call's members need, decided once on the host from their hparams so
    the step loop never synchronises: a population costs what its members use.

    ``adam``: some member uses Adam (moments and the Adam update; else plain in-place SGD);
    ``minibatch``: some member's batch is smaller than its train split (else no hashed mask);
    ``head_only``: some member adapts only the head; ``decay``: some member has weight decay.
    Every flag only skips work that would not change any member's numbers, so ``GENERAL``
    (everything on) gives the same results as the plan of the members themselves."""

    adam: bool = True
    minibatch: bool = True
    head_only: bool = True
    decay: bool = True

    @classmethod
    def of(cls, hp: MemberHParams, n_train: int) -> StepPlan:
        return cls(
            adam=bool((hp["optimizer"] == _ADAM).any()),
            minibatch=bool((hp["batch_size"] < n_train).any()),
            head_only=bool((hp["adapt"] == _HEAD).any()),
            decay=bool((hp["weight_decay"] != 0).any()),
        )


GENERAL = StepPlan()


def _per(vec: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member vector as ``[members, 1, ...]``, broadcasting over ``like``'s trailing dims."""
    return vec.reshape(-1, *([1] * (like.dim() - 1)))


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
        minibatch: bool = True,
        scale: torch.Tensor | None = None,
    ) -> Params:
        """Per-member minibatch gradients (the whole train split without ``minibatch``), each
        times its member's ``scale`` if given (folded into the loss: no extra pass over the
        weights, which is how the SGD path applies its per-member learning rates).

        The forward is vmapped over members; the backward is plain autograd on the sum of the
        member losses (members are independent, so that is every member's own gradient). This
        avoids ``torch.func.grad``, whose first call in a process imports ``torch._dynamo``
        (seconds per Tune trial process), and its per-step transform overhead."""
        n = x.shape[1] if d == 0 else x.shape[0]
        mdt = x.dtype if x.is_floating_point() else torch.float32

        def member_loss(
            q: Params, xx: torch.Tensor, yy: torch.Tensor, mm: torch.Tensor, dd: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(self.model, q, (xx,))
            return (per_example_loss(self.kind, out, yy) * mm).sum() / dd

        def full_loss(q: Params, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, q, (xx,))
            return per_example_loss(self.kind, out, yy).sum() / n

        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
            if minibatch:
                idx = torch.arange(n, device=x.device).unsqueeze(0)
                scores = hash_uniform(hp.seed.unsqueeze(1), t.unsqueeze(1), idx)
                order = torch.argsort(scores, dim=1)
                rank = torch.empty_like(order).scatter_(1, order, idx.expand_as(order))
                batch = hp["batch_size"]
                mask = (rank < batch.unsqueeze(1)).to(mdt)
                denom = batch.clamp(min=1).to(mdt)
                losses = vmap(member_loss, in_dims=(0, d, d, 0, 0))(leaves, x, y, mask, denom)
            else:
                losses = vmap(full_loss, in_dims=(0, d, d))(leaves, x, y)
            total = (losses if scale is None else losses * scale).sum()
            g = torch.autograd.grad(total, list(leaves.values()))
        return dict(zip(leaves, g, strict=True))

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
        plan: StepPlan = GENERAL,
    ) -> tuple[Params, Params, Params, torch.Tensor]:
        """One SGD / Adam step of every member, on the stacked tensors (per-member scalars are
        broadcast over each parameter's trailing dimensions). ``adam`` and ``head_only`` are the
        members' optimizer and adapt choices as masks, computed once per ``train`` call. The
        moments move only on a member's own Adam steps, so an SGD member costs the same
        whether or not it is packed with Adam members (``_sgd_step_``)."""
        g = self._grads(p, t, hp, x, y, d, plan.minibatch)
        dt = x.dtype if x.is_floating_point() else torch.float32
        limit = hp["steps"]
        active = (t < limit).to(dt)
        tn = t + (t < limit).long()
        tf = tn.clamp(min=1).to(dt)
        lr, wd = hp["lr"].to(dt), hp["weight_decay"].to(dt)
        body_keep = 1.0 - head_only.to(dt)
        moves = (t < limit) & adam
        new_p, new_m, new_v = {}, {}, {}
        for k in p:
            keep = (
                _per(body_keep, p[k])
                if not self.head_mask[k]
                else torch.ones((), dtype=dt, device=x.device)
            )
            gk = (g[k] + _per(wd, p[k]) * p[k]) * keep
            mk = _B1 * m[k] + (1 - _B1) * gk
            vk = _B2 * v[k] + (1 - _B2) * gk * gk
            bias1, bias2 = _per(1 - _B1**tf, p[k]), _per(1 - _B2**tf, p[k])
            adam_upd = (mk / bias1) / (torch.sqrt(vk / bias2) + _EPS)
            upd = torch.where(_per(adam, p[k]), adam_upd, gk)
            new_p[k] = p[k] - _per(lr, p[k]) * _per(active, p[k]) * upd
            new_m[k] = torch.where(_per(moves, p[k]), mk, m[k])
            new_v[k] = torch.where(_per(moves, p[k]), vk, v[k])
        return new_p, new_m, new_v, tn

    def _sgd_step_(
        self,
        p: Params,
        t: torch.Tensor,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        d: int | None,
        body_keep: torch.Tensor | None,
        plan: StepPlan,
        inplace: bool,
    ) -> torch.Tensor:
        """One SGD step of every member with fused (``_foreach``) ops, ``p -= lr * active *
        keep * (g + wd * p)`` (the same update as ``_step``'s SGD members, with ``lr * active``
        folded into the loss): into ``p``'s tensors with ``inplace``, else into new tensors
        set in ``p`` (the first step, so a call never copies its input weights). Returns the
        new step counts."""
        dt = x.dtype if x.is_floating_point() else torch.float32
        on = t < hp["steps"]
        rate = hp["lr"].to(dt) * on.to(dt)
        g = self._grads(p, t, hp, x, y, d, plan.minibatch, scale=rate)
        names = list(p)
        ps, gs = [p[k] for k in names], [g[k] for k in names]
        if body_keep is not None:
            body = [i for i, k in enumerate(names) if not self.head_mask[k]]
            torch._foreach_mul_([gs[i] for i in body], [_per(body_keep, ps[i]) for i in body])
        if plan.decay:
            decay = rate * hp["weight_decay"].to(dt)
            body_decay = decay if body_keep is None else decay * body_keep
            rates = [_per(decay if self.head_mask[k] else body_decay, p[k]) for k in names]
            torch._foreach_addcmul_(gs, ps, rates)
        if inplace:
            torch._foreach_sub_(ps, gs)
        else:
            p.update(zip(names, torch._foreach_sub(ps, gs), strict=True))
        return t + on.long()

    def train(
        self,
        state: PopulationState,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        n_steps: int,
        per_member_data: bool = False,
        plan: StepPlan | None = None,
    ) -> PopulationState:
        """Run ``n_steps`` steps for every member (members past their ``max_steps`` stay put).

        ``plan`` (default: ``StepPlan.of`` the members, one host read per call) chooses the
        work each step does; ``GENERAL`` forces the path that handles every member kind."""
        d = 0 if per_member_data else None
        n_train = int(x.shape[1] if per_member_data else x.shape[0])
        plan = plan if plan is not None else StepPlan.of(hp, n_train)
        hp = hp.to(x.device)
        adam, head_only = hp["optimizer"] == _ADAM, hp["adapt"] == _HEAD
        with torch.no_grad():
            if plan.adam:
                p, m, v, t = state.params, state.m, state.v, state.step
                for _ in range(n_steps):
                    p, m, v, t = self._step(p, m, v, t, hp, x, y, d, adam, head_only, plan)
                return PopulationState(p, m, v, t)
            p, t = dict(state.params), state.step
            dt = x.dtype if x.is_floating_point() else torch.float32
            body_keep = (1.0 - head_only.to(dt)) if plan.head_only else None
            for i in range(n_steps):
                t = self._sgd_step_(p, t, hp, x, y, d, body_keep, plan, inplace=i > 0)
            # no member's moments moved: the new state shares them with ``state``
            return PopulationState(p, state.m, state.v, t)

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
