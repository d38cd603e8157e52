"""The population step: many fine-tuning members, one vmapped computation.

A *member* is one fine-tuning run (weights, optimizer state, hyperparameters). Members that
share a model architecture are stacked along a leading dimension and trained together with
``vmap``; their hyperparameters are tensors (``MemberHParams``, one per entry of the
vocabulary in ``hparams.py``), so a population mixing learning rates, weight decays, optimizers
(SGD / Adam), batch sizes, step budgets and "head only" adaptation is still one call. Within
it a population costs what its members need: each call orders its members into contiguous
groups (``MemberGroups``: by optimizer, adapt and batch), so SGD members never pay for Adam,
full-batch members for minibatch sampling, and head-only members for their body (whose
features are computed once per call; a small MLP population runs as one segment instead,
where the body is cheaper than a second forward and backward). ``GENERAL`` (one masked update
of every member) is kept as the grouped path's reference. This is the pure functional core;
``population.Population`` is the stateful runner around it that priors fitting, sweeps and Ray
Tune trials all use.
On the CPU, built-in MLP / Conv4 members run as one stacked net (batched matmuls, grouped
convolutions: ``PopulationTrainer.folded``) rather than through ``vmap``, the same numbers
without the transform's per-call overhead.

Randomness (minibatch selection) comes from a counter-based hash of ``(member seed, member
step, example index)``, so a member's trajectory does not depend on which other members it is
packed with: training members together or one by one gives the same results.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from raymeta.core.conv_batched import (
    fold_inputs,
    foldable,
    folded_body,
    folded_forward,
    folded_head,
    has_conv,
)
from raymeta.core.losses import accuracy, per_example_loss
from raymeta.core.models import HEAD_PREFIX
from raymeta.errors import ConfigError
from raymeta.finetune.hparams import ADAPT, OPTIMIZERS, member_tensors
from raymeta.finetune.lockstep import Lockstep

Params = dict[str, torch.Tensor]
_P = 2147483647  # 2**31 - 1
_B1, _B2, _EPS = 0.9, 0.999, 1e-8
# A call runs its members as one segment (``MemberGroups.merged``) when the body work the
# head-only members would then redo per step, in multiply-adds, is at most this much.
MERGE_MAX_BODY_MACS = 2**20
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
    ``head_only``: some member adapts only the head; ``decay``: some member has weight decay;
    ``grouped``: members are ordered into contiguous optimizer / batch groups for the call
    (``MemberGroups``) so each group does only its own work with in-place (``_foreach``)
    updates; off, every member runs the one masked computation that handles every kind (the
    general path, kept as the fast path's reference). Every flag only skips work that would not
    change any member's numbers, so ``GENERAL`` gives the same results as the plan of the
    members themselves."""

    adam: bool = True
    minibatch: bool = True
    head_only: bool = True
    decay: bool = True
    grouped: bool = True

    @classmethod
    def of(cls, hp: MemberHParams, n_train: int) -> StepPlan:
        return cls(
            adam=bool((hp["optimizer"] == _ADAM).any()),
            minibatch=bool((hp["batch_size"] < n_train).any()),
            head_only=bool((hp["adapt"] == _HEAD).any()),
            decay=bool((hp["weight_decay"] != 0).any()),
        )


# ``MinibatchMasks`` draws at most this many bytes of hash scores at once (several steps).
MASK_CHUNK_BYTES = 8 * 2**20


class MinibatchMasks:
    """The minibatch masks of working rows ``rows = (a, b)`` for the steps of one ``train``
    call, drawn several steps at a time (``MASK_CHUNK_BYTES`` of scores) instead of once per
    step: the same ``hash_uniform`` numbers, ~20 small integer ops per draw, which on a small
    population cost as much as its forward. A row active at the call's start is at step
    ``t0 + i`` at the call's step ``i`` for as long as it stays active; a row past its limit
    gets some mask, which its zero loss weight ignores. ``at(i)``: the mask ``(b - a, n)`` in
    ``dtype`` (1 for the example in the step's minibatch) and each row's batch size."""

    def __init__(
        self,
        hp: MemberHParams,
        t0: torch.Tensor,
        rows: tuple[int, int],
        n: int,
        n_steps: int,
        dtype: torch.dtype,
    ) -> None:
        a, b = rows
        self.seed, self.t0 = hp.seed[a:b].unsqueeze(1), t0[a:b].unsqueeze(0)
        self.batch = hp["batch_size"][a:b].unsqueeze(1)
        self.denom = hp["batch_size"][a:b].clamp(min=1).to(dtype)
        self.idx = torch.arange(n, device=t0.device)
        self.dtype, self.n_steps = dtype, n_steps
        self.per = max(1, min(n_steps, MASK_CHUNK_BYTES // max(1, 8 * (b - a) * n)))
        self.first, self.masks = 0, torch.empty(0)

    def at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.first <= i < self.first + self.masks.shape[0]:
            k = min(self.per, self.n_steps - i)
            ahead = torch.arange(i, i + k, device=self.t0.device).unsqueeze(1)
            steps = (self.t0 + ahead).unsqueeze(2)
            scores = hash_uniform(self.seed.unsqueeze(0), steps, self.idx)
            order = torch.argsort(scores, dim=2)
            rank = torch.empty_like(order).scatter_(2, order, self.idx.expand_as(order))
            self.first, self.masks = i, (rank < self.batch).to(self.dtype)
        return self.masks[i - self.first], self.denom


@dataclass(frozen=True)
class Segment:
    """Working rows ``[lo, hi)`` that share one forward and backward: ``head`` members adapt
    only the head (no gradient flows into the body), and the rows ``mini`` (a run inside
    ``[lo, hi)``, maybe empty) draw minibatches. A full-batch row inside that run gets the
    whole split as its minibatch (the hash mask keeps every row), the same loss."""

    lo: int
    hi: int
    head: bool
    mini: tuple[int, int]


@dataclass(frozen=True)
class MemberGroups:
    """A ``train`` call's members in the order its steps work on (decided once per call, on
    the host), by optimizer, then adapt, then batch::

        SGD: all+full, all+mini, head+mini, head+full | Adam: head+full, head+mini, all+mini, all+full

    so the SGD members are the rows ``[0, sgd)`` (those that move their body ``[0, sgd_all)``),
    the Adam members ``[sgd, n)`` (those that move their body ``[adam_all, n)``), the head-only
    members one run, and each ``Segment`` (at most three: all, head, all; one without head-only
    members) has its minibatch rows in one run. Each group's work is on slices (views): no Adam
    math touches an SGD member, no body gradient or update a head-only member, no hash a
    full-batch segment.

    ``order[r]`` is the member (index into the call's members) at working row ``r``; ``None``
    when the members already are in that order. ``sgd_decay`` / ``adam_decay``: some member of
    the group has weight decay."""

    order: torch.Tensor | None
    n: int
    sgd: int
    sgd_all: int
    adam_all: int
    segments: tuple[Segment, ...]
    sgd_decay: bool
    adam_decay: bool

    @property
    def head_rows(self) -> int:
        """How many members adapt only their head (the rows ``[sgd_all, adam_all)``)."""
        return self.adam_all - self.sgd_all

    def merged(self) -> MemberGroups:
        """The same groups with every row in one segment: one forward and one backward per
        step instead of up to three, the head-only members' body gradients computed and left
        unused (their rows are outside ``[0, sgd_all)`` and ``[adam_all, n)``, which the body
        updates write), and one minibatch run from the first minibatch row to the last (a
        full-batch row inside it keeps its whole split). Why: each segment costs a fixed
        ~0.4 ms of dispatch and autograd on the CPU, which for small populations is most of
        the step (a packed trial of 16 mixed members: 2x member-steps/s merged, BENCHMARKS.md
        issue 17 ninth pass); ``PopulationTrainer.merges`` decides when."""
        if len(self.segments) == 1:
            return self
        runs = [sg.mini for sg in self.segments if sg.mini[1] > sg.mini[0]]
        run = (runs[0][0], runs[-1][1]) if runs else (0, 0)
        return dataclasses.replace(self, segments=(Segment(0, self.n, False, run),))

    @classmethod
    def of(cls, hp: MemberHParams, n_train: int, plan: StepPlan) -> MemberGroups:
        """The groups of ``hp``'s members (read on the host) under ``plan``: a flag the plan
        turns off is off for every member (``StepPlan(adam=False)`` trains every member SGD)."""
        key = member_keys(hp, n_train, plan)
        adam, mini = key >= 4, _MINI_KIND[key]
        decay = (hp["weight_decay"].cpu() != 0) & plan.decay
        order = torch.argsort(key, stable=True)
        n = int(key.numel())
        at = [int((key < k).sum()) for k in range(9)]  # rows before kind k
        if at[6] == at[2]:  # no head-only member: one segment
            cuts = [(0, n, False)]
        else:
            cuts = [(0, at[2], False), (at[2], at[6], True), (at[6], n, False)]
        is_mini = mini[order]
        segments = []
        for lo, hi, hd in cuts:
            if hi > lo:
                rows = torch.nonzero(is_mini[lo:hi]).flatten()
                run = (lo + int(rows[0]), lo + int(rows[-1]) + 1) if rows.numel() else (lo, lo)
                segments.append(Segment(lo, hi, hd, run))
        same = bool(torch.equal(order, torch.arange(n)))
        return cls(
            None if same else order,
            n,
            at[4],
            at[2],
            at[6],
            tuple(segments),
            bool((decay & ~adam).any()),
            bool((decay & adam).any()),
        )


def member_keys(hp: MemberHParams, n_train: int, plan: StepPlan) -> torch.Tensor:
    """Each member's kind under ``plan`` (read on the host), the ``MemberGroups`` order's sort
    key: 0-3 SGD all+full, all+mini, head+mini, head+full; 4-7 Adam head+full, head+mini,
    all+mini, all+full."""
    adam = (hp["optimizer"].cpu() == _ADAM) & plan.adam
    mini = ((hp["batch_size"].cpu() < n_train) & plan.minibatch).long()
    head = (hp["adapt"].cpu() == _HEAD) & plan.head_only
    return torch.where(
        adam, torch.where(head, 4 + mini, 7 - mini), torch.where(head, 3 - mini, mini)
    )


_MINI_KIND = torch.tensor([False, True, True, False, False, True, True, False])  # by kind


GENERAL = StepPlan(grouped=False)


def uniform(hp: MemberHParams) -> bool:
    """Whether every member uses the same optimizer and the same adapt (one host read): the
    populations a compiled trainer compiles (``PopulationTrainer.compiled_step``)."""
    return all(int(hp[k].unique().numel()) <= 1 for k in ("optimizer", "adapt"))


def bias_corrections(steps: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's ``1 - beta1**t`` and ``1 - beta2**t`` per member (``t`` at least 1), computed in
    float64 and cast to ``dt``, as ``torch._fused_adam_`` computes them: in float32,
    ``1 - 0.999**t`` loses most of its digits to cancellation (a float32 population drifted
    4e-3 from its float64 run in 40 steps), and the fused and per-member updates agree only
    if both round the same corrections (``test_population_mixed``)."""
    tf = steps.clamp(min=1).to(torch.float64)
    return (1 - _B1**tf).to(dt), (1 - _B2**tf).to(dt)


# modules whose parameters act elementwise (a multiply-add or two per parameter and example)
_ELEMENTWISE = (nn.LayerNorm, nn.BatchNorm1d, nn.PReLU)


def linear_body_macs(model: nn.Module) -> int | None:
    """Multiply-adds per 1-D example of ``model``'s body (everything but ``head``) when every
    module outside the head that holds parameters is an ``nn.Linear`` (one per weight) or
    acts elementwise (norms, PReLU: one per parameter); ``None`` for any other (a
    convolution, an embedding, a recurrent layer, a parameter of a custom module), whose
    work the weights do not tell. Used by ``PopulationTrainer.merges``."""
    macs = 0
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or name == "head" or name.startswith("head."):
            continue
        if isinstance(m, nn.Linear):
            macs += m.weight.numel()
        elif isinstance(m, _ELEMENTWISE):
            macs += sum(q.numel() for q in own)
        else:
            return None
    return macs


def _clone(d: Params) -> Params:
    return {k: v.clone() for k, v in d.items()}


def _per(vec: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member vector as ``[members, 1, ...]``, broadcasting over ``like``'s trailing dims."""
    return vec.reshape(-1, *([1] * (like.dim() - 1)))


class PopulationTrainer:
    """Trains stacked members of one model architecture on one task (or one task each)."""

    def __init__(self, model: nn.Module, kind: str, compile: bool = False, fold: bool = True):
        """``compile``: run the steps of uniform populations through ``torch.compile`` of the
        general step (``compiled_step``); off by default (see there for when it pays).
        ``fold``: run built-in MLP / Conv4 shapes as one stacked net (``folded``); off, every
        model runs vmapped (the reference the stacked net is tested against)."""
        self.model, self.kind, self.compile = model, kind, compile
        self._compiled: dict[str, Any] = {}
        self.folds = fold and foldable(model)
        self.conv = self.folds and has_conv(model)
        names = [n for n, _ in model.named_parameters()]
        self.head_mask = {n: n.startswith(HEAD_PREFIX) for n in names}
        # whether the model's output is ``self.head`` of the head's input (checked on first
        # use: the model contract names the head, it does not promise nothing follows it)
        self.head_is_last: bool | None = True if self.folds else None  # foldable: by construction
        self.body_macs = linear_body_macs(model)  # per 1-D example; None: not known

    def merges(self, groups: MemberGroups, x: torch.Tensor, per_member_data: bool) -> bool:
        """Whether a call runs ``groups`` as one segment (``MemberGroups.merged``): on the
        CPU, for a body of linear layers (``linear_body_macs``) on 1-D examples, when the
        head-only members' body work per step is at most ``MERGE_MAX_BODY_MACS``. Measured on
        this CPU (BENCHMARKS.md, issue 17 ninth pass): merged is 1.6-2.5x faster at 16-64
        mixed members, as fast at 256 sweep members (~1M MACs, the threshold), slower at 800
        (the body work then outweighs two segments' overhead). Conv nets and other bodies
        keep their segments: their work is not known from their weights, and a conv body is
        where ``head_inputs`` saves the most."""
        lead = 2 if per_member_data else 1  # (members,) examples, features
        if (
            self.body_macs is None
            or x.device.type != "cpu"
            or x.dim() != lead + 1
            or len(groups.segments) == 1
        ):
            return False
        work = groups.head_rows * int(x.shape[lead - 1]) * self.body_macs
        return work <= MERGE_MAX_BODY_MACS

    def head_inputs(
        self, p: Params, x: torch.Tensor, d: int | None, lo: int, hi: int
    ) -> torch.Tensor | None:
        """What ``self.model.head`` receives (the body's features) for members ``[lo, hi)``
        of ``p`` on their data, from one vmapped forward; ``None`` where the model's output
        is not the head's output of them (then a head-only member runs the whole model). A
        head-only member's body does not move, so within a ``train`` call its features are
        constants: its steps run the head alone."""
        head = getattr(self.model, "head", None)
        if not isinstance(head, nn.Module) or self.head_is_last is False:
            return None
        q = {k: v[lo:hi] for k, v in p.items()}
        xs = x[lo:hi] if d == 0 else x
        if self.folded(x.device):  # the head is last by construction (``foldable``)
            with torch.no_grad():
                return folded_body(self.model, q, self._stacked_inputs(xs, d, hi - lo))
        seen: list[torch.Tensor] = []

        def run(qq: Params, xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seen.clear()
            hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            try:
                out = functional_call(self.model, qq, (xx,))
            finally:
                hook.remove()
            return (seen[0] if len(seen) == 1 else out), out

        with torch.no_grad():
            feats, out = vmap(run, in_dims=(0, d))(q, xs)
            if len(seen) != 1:  # the head ran more than once (or not at all)
                self.head_is_last = False
                return None
            if self.head_is_last is None:
                again = vmap(self._head_forward)(self._head_params(q), feats)
                self.head_is_last = again.shape == out.shape and bool(torch.equal(again, out))
        return feats if self.head_is_last else None

    def _head_params(self, q: Params) -> Params:
        return {k[len(HEAD_PREFIX) :]: v for k, v in q.items() if self.head_mask[k]}

    def folded(self, device: torch.device) -> bool:
        """Whether members run as one stacked net (``raymeta.core.conv_batched``: linear layers
        as batched matmuls, convolutions grouped by member) instead of ``vmap`` over
        ``functional_call``. Why: for the small models fine-tuning packs, a vmapped forward
        and backward costs ~1 ms of transform overhead per call, 2-3x the stacked net's whole
        step at 16 members on this CPU (BENCHMARKS.md, issue 17 fifth pass), and each grouped
        segment, evaluation and head-only call pays it. Built-in MLP / Conv4 shapes only
        (``foldable``), and only on the CPU: on CUDA the vmapped convolution is the fast one
        (as in the meta-engine) and the vmapped MLP step is what the GPU figures in
        BENCHMARKS.md were measured with; stacking there is unmeasured, so it is not switched
        on unseen. Results equal the vmapped ones to rounding."""
        return self.folds and device.type == "cpu"

    def _stacked_inputs(self, x: torch.Tensor, d: int | None, m: int) -> torch.Tensor:
        """``m`` members' inputs as the stacked net takes them: ``(m, B, ...)`` (shared data
        expanded, a view), folded into channels for a conv net."""
        xs = x if d == 0 else x.expand(m, *x.shape)
        return fold_inputs(xs) if self.conv else xs

    def _example_losses(self, out: torch.Tensor, y: torch.Tensor, d: int | None) -> torch.Tensor:
        """Per-example losses ``(M, B)`` of stacked outputs ``(M, B, ...)``."""
        m, b = out.shape[0], out.shape[1]
        ys = y if d == 0 else y.expand(m, *y.shape)
        return per_example_loss(self.kind, out.flatten(0, 1), ys.flatten(0, 1)).reshape(m, b)

    def member_examples(
        self, q: Params, x: torch.Tensor, y: torch.Tensor, d: int | None
    ) -> torch.Tensor:
        """Per-example losses ``(M, B)`` of the members ``q`` (stacked weights) on their data
        (``d=0``: ``x``/``y`` are per member; ``None``: shared): the stacked net where
        ``folded``, else ``vmap`` over ``functional_call``."""
        if self.folded(x.device):
            m = next(iter(q.values())).shape[0]
            out = folded_forward(self.model, q, self._stacked_inputs(x, d, m))
            return self._example_losses(out, y, d)

        def examples(qq: Params, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            return per_example_loss(self.kind, functional_call(self.model, qq, (xx,)), yy)

        return vmap(examples, in_dims=(0, d, d))(q, x, y)

    def head_examples(
        self, q: Params, feats: torch.Tensor, y: torch.Tensor, d: int | None
    ) -> torch.Tensor:
        """``member_examples`` of the head alone on the members' body features ``feats``
        (``head_inputs``); ``q`` holds (at least) the members' ``head.*`` weights."""
        hq = {k: v for k, v in q.items() if self.head_mask[k]}
        if self.folded(feats.device):
            return self._example_losses(folded_head(hq, feats), y, d)

        def examples(h: Params, ff: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            return per_example_loss(self.kind, self._head_forward(h, ff), yy)

        return vmap(examples, in_dims=(0, 0, d))(self._head_params(hq), feats, y)

    def _head_forward(self, hq: Params, feats: torch.Tensor) -> torch.Tensor:
        head = self.model.head
        assert isinstance(head, nn.Module)
        return functional_call(head, hq, (feats,))

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
        functional: bool = False,
    ) -> Params:
        """Per-member minibatch gradients (the whole train split without ``minibatch``), each
        times its member's ``scale`` if given (folded into the loss: no extra pass over the
        weights, which is how the SGD path applies its per-member learning rates).

        The forward is vmapped over members; the backward is plain autograd on the sum of the
        member losses (members are independent, so that is every member's own gradient). This
        avoids ``torch.func.grad``, whose first call in a process imports ``torch._dynamo``
        (seconds per Tune trial process), and its per-step transform overhead. ``functional``
        takes the same gradient with ``torch.func.grad`` instead: what ``torch.compile``
        traces into one graph (``torch.autograd.grad`` would break it in two)."""
        n = x.shape[1] if d == 0 else x.shape[0]
        mdt = x.dtype if x.is_floating_point() else torch.float32
        if minibatch:
            idx = torch.arange(n, device=x.device).unsqueeze(0)
            scores = hash_uniform(hp.seed.unsqueeze(1), t.unsqueeze(1), idx)
            order = torch.argsort(scores, dim=1)
            rank = torch.empty_like(order).scatter_(1, order, idx.expand_as(order))
            batch = hp["batch_size"]
            mask = (rank < batch.unsqueeze(1)).to(mdt)
            denom = batch.clamp(min=1).to(mdt)

        def total(leaves: Params) -> torch.Tensor:
            per = self.member_examples(leaves, x, y, d)
            losses = (per * mask).sum(1) / denom if minibatch else per.sum(1) / n
            return (losses if scale is None else losses * scale).sum()

        if functional:
            return torch.func.grad(total)(dict(p))
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in p.items()}
            g = torch.autograd.grad(total(leaves), list(leaves.values()))
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
        functional: bool = False,
    ) -> tuple[Params, Params, Params, torch.Tensor]:
        """One SGD / Adam step of every member, on the stacked tensors (per-member scalars are
        broadcast over each parameter's trailing dimensions). ``adam`` and ``head_only`` are the
        members' optimizer and adapt choices as masks, computed once per ``train`` call. The
        moments move only on a member's own Adam steps, so an SGD member costs the same
        whether or not it is packed with Adam members; a head-only member's body and its body
        moments do not move at all (not even by momentum a member that adapted everything
        before a PBT explore switched it to ``head`` carries: only ``head.*`` moves)."""
        g = self._grads(p, t, hp, x, y, d, plan.minibatch, functional=functional)
        dt = x.dtype if x.is_floating_point() else torch.float32
        limit = hp["steps"]
        active = (t < limit).to(dt)
        tn = t + (t < limit).long()
        c1, c2 = bias_corrections(tn, dt)
        lr, wd = hp["lr"].to(dt), hp["weight_decay"].to(dt)
        body_keep = 1.0 - head_only.to(dt)
        moves = (t < limit) & adam
        body_moves = moves & ~head_only
        new_p, new_m, new_v = {}, {}, {}
        for k in p:  # the plan's flags skip what no member needs (constants when compiled)
            head = self.head_mask[k]
            gk = g[k] + _per(wd, p[k]) * p[k] if plan.decay else g[k]
            if plan.head_only and not head:
                keep = _per(body_keep, p[k])
                gk = gk * keep
            else:
                keep = torch.ones((), dtype=dt, device=x.device)
            if not plan.adam:  # gk already carries keep
                new_p[k] = p[k] - _per(lr * active, p[k]) * gk
                new_m[k], new_v[k] = m[k], v[k]
                continue
            mk = _B1 * m[k] + (1 - _B1) * gk
            vk = _B2 * v[k] + (1 - _B2) * gk * gk
            bias1, bias2 = _per(c1, p[k]), _per(c2, p[k])
            adam_upd = (mk / bias1) / (torch.sqrt(vk / bias2) + _EPS)
            upd = torch.where(_per(adam, p[k]), adam_upd, gk)
            new_p[k] = p[k] - _per(lr, p[k]) * _per(active, p[k]) * keep * upd
            mv = _per(moves if head else body_moves, p[k])
            new_m[k] = torch.where(mv, mk, m[k])
            new_v[k] = torch.where(mv, vk, v[k])
        return new_p, new_m, new_v, tn

    def _segment_grads(
        self,
        p: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        d: int | None,
        seg: Segment,
        scale: torch.Tensor,
        feats: torch.Tensor | None = None,
        mask: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Params:
        """``_grads`` of the working rows of ``seg``: the per-example losses of its members in
        one vmapped forward, the minibatch ``mask`` (and its rows' batch sizes: a
        ``MinibatchMasks`` step) only on its rows ``seg.mini``, each member's loss times its
        ``scale`` (an SGD member's ``lr * active``, an Adam member's ``active``), one
        backward; for a head-only segment the body is a constant (gradients of the head
        only), and with its ``feats`` (``head_inputs``) only the head runs."""
        lo, hi = seg.lo, seg.hi
        n = x.shape[1] if d == 0 else x.shape[0]
        xs, ys = (x[lo:hi], y[lo:hi]) if d == 0 else (x, y)
        with torch.enable_grad():
            q = {k: v[lo:hi].detach() for k, v in p.items()}
            wrt = [k for k in q if self.head_mask[k] or not seg.head]
            for k in wrt:
                q[k].requires_grad_()
            if feats is not None:
                per = self.head_examples(q, feats, ys, d)
            else:
                per = self.member_examples(q, xs, ys, d)
            a, b = seg.mini[0] - lo, seg.mini[1] - lo
            if mask is not None:
                keep, denom = mask
                losses = torch.cat(
                    [per[:a].sum(1) / n, (per[a:b] * keep).sum(1) / denom, per[b:].sum(1) / n]
                )
            else:
                losses = per.sum(1) / n
            g = torch.autograd.grad((losses * scale[lo:hi]).sum(), [q[k] for k in wrt])
        return dict(zip(wrt, g, strict=True))

    def _grouped(
        self,
        p: Params,
        m: Params,
        v: Params,
        t: torch.Tensor,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        d: int | None,
        groups: MemberGroups,
        n_steps: int,
    ) -> torch.Tensor:
        """``n_steps`` steps of members in ``groups`` order, in place: the SGD rows ``[0, s)``
        as ``p -= lr * active * (g + wd * p)`` with ``lr * active`` folded into the loss, the
        Adam rows ``[s, n)`` as ``_step``'s Adam update on their slices of ``p`` and of the
        moments ``m``/``v`` (which hold only the Adam rows), written as ``torch.optim``'s Adam
        writes it (``m.lerp_``, ``p += -lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)``: ten
        in-place passes, one buffer, where ``_step`` makes 20 tensors); a head-only member's
        body, and its body moments, are not touched. An inactive Adam member's gradient is zero
        (its loss weight is) and its decay, moment weights and step are zero, so nothing of it
        moves. On the CPU, when the Adam members with steps left share a step count
        (``_lockstep``, a few host reads per call), ``_fused_adam`` updates them instead, with
        the members that sit a step out put back; otherwise nothing here reads a tensor on the
        host. Returns the new step counts."""
        dt = x.dtype if x.is_floating_point() else torch.float32
        dev, s, n = x.device, groups.sgd, groups.n
        names = list(p)
        head = [self.head_mask[k] for k in names]
        limit = hp["steps"]
        lr, wd = hp["lr"].to(dt), hp["weight_decay"].to(dt)
        lrs = torch.cat([lr[:s], torch.ones(n - s, dtype=dt, device=dev)])
        na, sa, aa = n - s, groups.sgd_all, groups.adam_all
        # the rows each parameter moves: head parameters every member's, body ones only the
        # members that adapt everything ([0, sgd_all) of SGD, [adam_all, n) of Adam)
        sgd_rows = [(0, s if hd else sa) for hd in head]
        adam_rows = [(s if hd else aa, n) for hd in head]
        h = {k: torch.empty_like(m[k][r[0] - s :]) for k, r in zip(names, adam_rows, strict=True)}
        b2v, one = (
            torch.full((na,), _B2, dtype=dt, device=dev),
            torch.ones(na, dtype=dt, device=dev),
        )

        segs = groups.segments

        def grad_rows(g: list[Params], k: str, lo: int, hi: int) -> torch.Tensor:
            """Rows ``[lo, hi)`` (working order) of the gradient of ``k``: ``g`` holds each
            segment's gradients, a head parameter's rows joined (small), a body parameter's
            rows are one all-members segment's (head-only segments have none)."""
            if hi <= lo:  # no such member: an empty view to write nothing into
                return p[k][lo:hi]
            if len(g) == 1 or self.head_mask[k]:
                return g[0][k][lo:hi]
            j = next(j for j, sg in enumerate(segs) if not sg.head and sg.lo <= lo and hi <= sg.hi)
            return g[j][k][lo - segs[j].lo : hi - segs[j].lo]

        feats = {}  # a head-only segment's features: constants for the call (see head_inputs)
        for j, sg in enumerate(segs):
            f = self.head_inputs(p, x, d, sg.lo, sg.hi) if sg.head and n_steps > 1 else None
            if f is not None:
                feats[j] = f
        masks = {  # each segment's minibatch rows: their masks, several steps per draw
            j: MinibatchMasks(hp, t, sg.mini, x.shape[1] if d == 0 else x.shape[0], n_steps, dt)
            for j, sg in enumerate(segs)
            if sg.mini[1] > sg.mini[0]
        }
        lockstep = self._lockstep(t[s:], limit[s:], n_steps, dev) if na else None
        for i in range(n_steps):
            on = t < limit
            onf = on.to(dt)
            scale = lrs * onf
            g = [
                self._segment_grads(
                    p, x, y, d, sg, scale, feats.get(j), masks[j].at(i) if j in masks else None
                )
                for j, sg in enumerate(segs)
            ]
            if len(g) > 1:  # every segment has the head's gradient: one tensor of all rows
                g[0].update(
                    {k: torch.cat([part[k] for part in g]) for k in names if self.head_mask[k]}
                )

            if s:
                ps = [p[k][lo:hi] for k, (lo, hi) in zip(names, sgd_rows, strict=True)]
                gs = [grad_rows(g, k, lo, hi) for k, (lo, hi) in zip(names, sgd_rows, strict=True)]
                if groups.sgd_decay:
                    decay = lr[:s] * onf[:s] * wd[:s]
                    rates = [
                        _per(decay[lo:hi], q) for q, (lo, hi) in zip(ps, sgd_rows, strict=True)
                    ]
                    torch._foreach_addcmul_(gs, ps, rates)
                torch._foreach_sub_(ps, gs)
            if na and lockstep is not None:  # the active Adam members on one step count: fused
                self._fused_adam(
                    p,
                    m,
                    v,
                    g,
                    h,
                    names,
                    adam_rows,
                    s,
                    lr,
                    wd,
                    lockstep.first + i + 1,
                    grad_rows,
                    groups,
                    lockstep.sitting_out(i, s, adam_rows),
                )
            elif na:
                on_a, onf_a = on[s:], onf[s:]
                w1, d1 = (1 - _B1) * onf_a, torch.where(on_a, b2v, one)
                c1, c2 = bias_corrections(t[s:] + on_a.long(), dt)
                root2 = torch.sqrt(c2)
                step = -(lr[s:] * onf_a) / c1
                wd_on = wd[s:] * onf_a
                for k, (lo, hi) in zip(names, adam_rows, strict=True):
                    r = slice(lo - s, hi - s)  # the rows of the Adam-only vectors and moments

                    def per(vec: torch.Tensor, like: torch.Tensor, r: slice = r) -> torch.Tensor:
                        return _per(vec[r], like)

                    pk, gk, hk = p[k][lo:hi], grad_rows(g, k, lo, hi), h[k]
                    mk, vk = m[k][r], v[k][r]
                    if groups.adam_decay:
                        gk.addcmul_(pk, per(wd_on, pk))
                    mk.lerp_(gk, per(w1, mk))
                    vk.mul_(per(d1, vk)).addcmul_(gk, gk, value=1 - _B2)
                    torch.sqrt(vk, out=hk).div_(per(root2, hk)).add_(_EPS)
                    torch.div(mk, hk, out=gk)
                    pk.addcmul_(gk, per(step, gk))
            t = t + on.long()
        return t

    @staticmethod
    def _lockstep(
        t: torch.Tensor, limit: torch.Tensor, n_steps: int, dev: torch.device
    ) -> Lockstep | None:
        """``Lockstep.of`` the Adam members on the CPU (the fused update's home; elsewhere,
        and when they are not in lockstep, None: the per-member update runs)."""
        return None if dev.type != "cpu" else Lockstep.of(t, limit, n_steps)

    def _fused_adam(
        self,
        p: Params,
        m: Params,
        v: Params,
        g: list[Params],
        z: Params,
        names: list[str],
        adam_rows: list[tuple[int, int]],
        s: int,
        lr: torch.Tensor,
        wd: torch.Tensor,
        step: int,
        grad_rows: Callable[[list[Params], str, int, int], torch.Tensor],
        groups: MemberGroups,
        still: list[torch.Tensor] | None = None,
    ) -> None:
        """``_grouped``'s Adam update of members that share step ``step`` (``still`` aside), as
        ``torch._fused_adam_`` does it (one pass over each parameter's weights, gradient and
        moments, where the per-member update takes eight; measured 2.2x faster on the CPU),
        into zeroed buffers ``z`` at learning rate 1, then ``p += lr * z`` per member: the
        kernel takes one learning rate and one step per tensor, and members differ in rate.
        The same update up to the rounding of its products (both compute the bias corrections
        in float64: ``bias_corrections``). The kernel ignores strides: non-contiguous moments
        or gradients go through contiguous copies, the moments copied back (the buffers
        ``z`` are the caller's, allocated contiguous). ``still``: per parameter, the rows
        (of its Adam slice) of members that sit this step out (past their ``steps``): the
        kernel updates them too, so their moments are put back and their update zeroed,
        which leaves them exactly as they were (a NaN member's update too)."""
        ks = list(zip(names, adam_rows, strict=True))
        ps = [p[k][lo:hi] for k, (lo, hi) in ks]
        gs = [grad_rows(g, k, lo, hi) for k, (lo, hi) in ks]
        ms = [m[k][lo - s : hi - s] for k, (lo, hi) in ks]
        vs = [v[k][lo - s : hi - s] for k, (lo, hi) in ks]
        zs = [z[k] for k in names]
        lrs = [_per(lr[lo:hi], q) for q, (_, (lo, hi)) in zip(ps, ks, strict=True)]
        if groups.adam_decay:
            for q, gq, (_, (lo, hi)) in zip(ps, gs, ks, strict=True):
                gq.addcmul_(q, _per(wd[lo:hi], q))
        # ``contiguous`` is the tensor itself where it already is (row slices, fresh buffers)
        gs = [q.contiguous() for q in gs]
        ms_c, vs_c = [q.contiguous() for q in ms], [q.contiguous() for q in vs]
        torch._foreach_zero_(zs)
        count = torch.tensor(float(step), dtype=torch.float32)
        out = [] if still is None else list(zip(ms_c, vs_c, zs, still, strict=True))
        kept = [(q.index_select(0, r), w.index_select(0, r)) for q, w, _, r in out]
        torch._fused_adam_(
            zs,
            gs,
            ms_c,
            vs_c,
            [],
            [count] * len(zs),
            lr=1.0,
            beta1=_B1,
            beta2=_B2,
            weight_decay=0.0,
            eps=_EPS,
            amsgrad=False,
            maximize=False,
        )
        for (q, w, zq, r), (km, kv) in zip(out, kept, strict=True):  # those sitting out
            q.index_copy_(0, r, km)
            w.index_copy_(0, r, kv)
            zq.index_fill_(0, r, 0.0)
        for dst, src in ((ms, ms_c), (vs, vs_c)):
            for a, b in zip(dst, src, strict=True):
                if a is not b:
                    a.copy_(b)
        for q, zq, rate in zip(ps, zs, lrs, strict=True):
            q.addcmul_(zq, rate)

    def train(
        self,
        state: PopulationState,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        n_steps: int,
        per_member_data: bool = False,
        plan: StepPlan | None = None,
        *,
        members: torch.Tensor | None = None,
        inplace: bool = False,
    ) -> PopulationState:
        """Run ``n_steps`` steps for every member (members past their ``max_steps`` stay put).

        ``plan`` (default: ``StepPlan.of`` the members, one host read per call) chooses the
        work each step does; ``GENERAL`` forces the path that handles every member kind.
        ``members`` (indices) trains only those members, the others keep their state.
        ``inplace`` writes the result into ``state``'s tensors (a caller that owns them: a
        ``Population``); otherwise ``state`` is left as it was and tensors the call did not
        change (the moments of a call without Adam members) are shared with it."""
        d = 0 if per_member_data else None
        n_train = int(x.shape[1] if per_member_data else x.shape[0])
        sel = hp if members is None else hp.index(members.cpu())
        plan = plan if plan is not None else StepPlan.of(sel, n_train)
        if not self.groups(sel, plan):
            return self._train_general(state, hp, x, y, n_steps, d, plan, members, inplace)
        groups = MemberGroups.of(sel, n_train, plan)
        if self.merges(groups, x, per_member_data):
            groups = groups.merged()
        rows = groups.order
        if members is not None:
            rows = members.cpu() if rows is None else members.cpu()[rows]
        s, dev = groups.sgd, x.device
        with torch.no_grad():
            if rows is None:  # every member, already in group order: no gather
                hpw, xw, yw = hp.to(dev), x, y
                p = dict(state.params) if inplace else _clone(state.params)
                m_out = state.m if inplace or s == groups.n else _clone(state.m)
                v_out = state.v if inplace or s == groups.n else _clone(state.v)
                mw, vw = ({k: q[s:] for k, q in d_.items()} for d_ in (m_out, v_out))
                t = self._grouped(p, mw, vw, state.step, hpw, xw, yw, d, groups, n_steps)
                return PopulationState(p, m_out, v_out, t)
            r = rows.to(dev)
            ra = r[s:]
            hpw = hp.index(rows).to(dev)
            xw, yw = (x[r], y[r]) if per_member_data else (x, y)
            p = {k: q[r] for k, q in state.params.items()}  # (index_select is 5-8x slower on CPU)
            mw = {k: q[ra] for k, q in state.m.items()}
            vw = {k: q[ra] for k, q in state.v.items()}
            tw = self._grouped(p, mw, vw, state.step[r], hpw, xw, yw, d, groups, n_steps)
            if inplace:
                out = state
                for whole, part, at in ((out.params, p, r), (out.m, mw, ra), (out.v, vw, ra)):
                    for k in whole:
                        whole[k].index_copy_(0, at, part[k])
                out.step.index_copy_(0, r, tw)
                return out

            def put(whole: Params, part: Params, at: torch.Tensor) -> Params:
                if at.numel() == 0:
                    return whole
                return {k: q.index_copy(0, at, part[k]) for k, q in whole.items()}

            return PopulationState(
                put(state.params, p, r),
                put(state.m, mw, ra),
                put(state.v, vw, ra),
                state.step.index_copy(0, r, tw),
            )

    def groups(self, hp: MemberHParams, plan: StepPlan) -> bool:
        """Whether ``train`` works on ``hp``'s members in ``MemberGroups`` (their kinds'
        order, ``member_keys``) under ``plan``, rather than on the general masked path."""
        return plan.grouped and not (self.compile and uniform(hp))

    def group_keys(self, hp: MemberHParams, n_train: int) -> torch.Tensor | None:
        """The kinds (``member_keys``) whose order ``train`` puts every member of ``hp`` in,
        ``None`` when it does not group them: a caller that keeps its members' rows in that
        order (``layout.RowLayout``) spares each call a gather and a scatter."""
        plan = StepPlan.of(hp, n_train)
        return member_keys(hp, n_train, plan) if self.groups(hp, plan) else None

    def _train_general(
        self,
        state: PopulationState,
        hp: MemberHParams,
        x: torch.Tensor,
        y: torch.Tensor,
        n_steps: int,
        d: int | None,
        plan: StepPlan,
        members: torch.Tensor | None,
        inplace: bool,
    ) -> PopulationState:
        """The general path (``GENERAL``): every member through ``_step``'s masked update
        (compiled with ``compile``: ``compiled_step``)."""
        if members is not None:
            idx = members.to(state.step.device)
            xs, ys = (x[idx.to(x.device)], y[idx.to(x.device)]) if d == 0 else (x, y)
            sub = self._train_general(
                state.index(idx), hp.index(members.cpu()), xs, ys, n_steps, d, plan, None, False
            )
            out = state if inplace else state.index(slice(None))
            for whole, part in ((out.params, sub.params), (out.m, sub.m), (out.v, sub.v)):
                for k in whole:
                    whole[k][idx] = part[k]
            out.step[idx] = sub.step
            return out
        hp = hp.to(x.device)
        adam, head_only = hp["optimizer"] == _ADAM, hp["adapt"] == _HEAD
        graphs = self.compile and x.device.type == "cuda"
        step = self.compiled_step(x.device) if self.compile else self._step
        with torch.no_grad():
            p, m, v, t = state.params, state.m, state.v, state.step
            for _ in range(n_steps):
                if graphs:  # each step's outputs are the next one's inputs (CUDA graph trees)
                    torch.compiler.cudagraph_mark_step_begin()
                p, m, v, t = step(p, m, v, t, hp, x, y, d, adam, head_only, plan)
            if graphs:  # a graph's outputs live in its pool until its next replay: copy out
                p, m, v = (_clone(q) for q in (p, m, v))
                t = t.clone()
            return PopulationState(p, m, v, t)

    def compiled_step(self, device: torch.device) -> Any:
        """``_step`` (the general masked step, gradients by ``torch.func.grad``) through
        ``torch.compile``: on CUDA with ``mode="reduce-overhead"`` (CUDA graphs: the step's few
        hundred small kernels are launched as one graph, the launch-bound cost of a large
        population of small models), elsewhere inductor's default (fused elementwise code).

        Only populations whose members share one optimizer and one adapt take it (``uniform``):
        a mixed population would run every member through the masked step, Adam and body math
        included, which the grouped eager path avoids (at 1,024 mixed sinusoid members on this
        CPU: compiled 0.37x bare, grouped eager 0.63x; all SGD: 1.54x vs 1.14x; BENCHMARKS.md).

        Why optional: the first call compiles for tens of seconds (45-85 s for the sinusoid MLP
        on 2 busy CPU cores), and again for each new member count, data shape or step plan, so
        it pays only for long runs (``raymeta bench population --compile`` measures both;
        BENCHMARKS.md). The plan's flags are constants of the compiled graph: a population
        without Adam members has no Adam math in it.
        Results equal the eager general step to rounding (``tests/test_population_compiled.py``).
        """
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(
                functools.partial(self._step, functional=True), mode=mode, dynamic=False
            )
        return self._compiled[mode]

    def evaluate(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, per_member_data: bool = False
    ) -> dict[str, torch.Tensor]:
        """Per-member mean loss (and accuracy for classification) on ``(x, y)``. One member on
        shared data is one plain forward (a vmap's set-up costs more than a small model's
        forward, and final picks score thousands of single weights)."""
        d = 0 if per_member_data else None

        def one(q: Params, xx: torch.Tensor, yy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = functional_call(self.model, q, (xx,))
            acc = accuracy(out, yy) if self.kind == "classification" else torch.zeros(())
            return per_example_loss(self.kind, out, yy).mean(), acc

        with torch.no_grad():
            if d is None and next(iter(params.values())).shape[0] == 1:  # no vmap for one
                loss, acc = (
                    r.unsqueeze(0) for r in one({k: v[0] for k, v in params.items()}, x, y)
                )
            elif self.folded(x.device):
                m = next(iter(params.values())).shape[0]
                z = folded_forward(self.model, params, self._stacked_inputs(x, d, m))
                loss = self._example_losses(z, y, d).mean(1)
                if self.kind == "classification":
                    acc = accuracy(z, y if d == 0 else y.expand(m, *y.shape))
            else:
                loss, acc = vmap(one, in_dims=(0, d, d))(params, x, y)
        out = {"loss": loss}
        if self.kind == "classification":
            out["accuracy"] = acc
        return out
