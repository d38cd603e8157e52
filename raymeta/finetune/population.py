"""The one fine-tuning runner: a population of members of one model, trained together.

Priors fitting (tasks x configs as members, each on its own task), sweeps (a strategy's
members on one held-out task) and Ray Tune trials (a trial's packed members) all fine-tune
through ``Population`` and its loop ``run_schedule``; they differ only in how they seed their
members, when they evaluate and what they do with an evaluation. Exact semantics:

* members start at the meta-init, the model's own parameters only (a Meta-SGD checkpoint's
  learned inner rates ``lr.*`` are not weights), or each at its own seeded random init
  (``initial_state``); the weights take the task data's dtype;
* every member has its own minibatch seed, so its trajectory does not depend on which other
  members it is trained with (``step.PopulationTrainer`` guarantees it);
* a member trains until its own ``steps`` or, in a run with a budget, the run's ``horizon``
  (``hparams.member_tensors``); members at their limit are skipped, so a population costs the
  sum of its members' steps, not members x the longest;
* each evaluation updates, per member, a snapshot of its weights at its lowest validation loss
  so far (NaN and inf never count), with the config it had and the steps it had trained then;
  the population's best is the lowest snapshot, the earliest on ties, then the lowest index;
* ``exploit`` is PBT inside the population: the worst ``ExploitRule.count`` members (by
  current val loss, ties by index) each copy weights, optimizer state and step counter from a
  member of the best as many, drawn with the given generator, and take that member's config
  perturbed within the prior (the model stays the population's). ``pinned`` members copy the
  weights but keep their config: a Tune trial's member 0, whose config Tune owns. A member
  keeps its own seed and its own best snapshot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from raymeta.core.models import ModelSpec, build_model
from raymeta.core.train import derive_seed
from raymeta.finetune.layout import RowLayout
from raymeta.finetune.step import MemberHParams, PopulationState, PopulationTrainer

Params = dict[str, torch.Tensor]
Config = dict[str, Any]
Perturb = Callable[[Mapping[str, Any], np.random.Generator], Config]
_P = 2147483647


@dataclass(frozen=True)
class ExploitRule:
    """How many members exploit, and which keep their config (see the module docstring)."""

    fraction: float = 0.25
    min_count: int = 0  # at least this many (an in-process sweep of 2-3 members exploits one)
    pinned: tuple[int, ...] = ()

    def count(self, n_members: int) -> int:
        return max(self.min_count, int(n_members * self.fraction))


SWEEP_RULE = ExploitRule(min_count=1)
TRIAL_RULE = ExploitRule(pinned=(0,))


@dataclass(frozen=True)
class Exploit:
    """PBT for ``run_schedule``: the rule, the explore step and the generator after step s."""

    perturb: Perturb
    rule: ExploitRule
    rng: Callable[[int], np.random.Generator]


def member_seeds(seed: int, trial_index: int, n: int) -> list[int]:
    """Minibatch seeds of a Tune trial's members (distinct per run seed, trial and member)."""
    return [derive_seed(seed, trial_index, m) % _P for m in range(n)]


def scratch_params(spec: ModelSpec, seed: int) -> Params:
    """A seeded random initialisation of ``spec`` (the ``scratch`` baseline). Only the CPU
    generator is seeded, where the model is built: ``torch.manual_seed`` also walks every
    accelerator backend, which costs more than building a small model (sweeps build many)."""
    torch.default_generator.manual_seed(int(seed))
    model = build_model(spec)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def data_dtype(x: torch.Tensor) -> torch.dtype:
    """Weights take the task's floating dtype (float32 for integer-coded inputs)."""
    return x.dtype if x.is_floating_point() else torch.float32


def initial_state(
    spec: ModelSpec,
    meta_params: Mapping[str, torch.Tensor] | None,
    scratch_seeds: Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> PopulationState:
    """One member per seed, all at the meta-init (the model's parameters only), or (scratch,
    ``meta_params=None``) each at the random init of its seed."""
    if meta_params is not None:
        names = [k for k, _ in build_model(spec).named_parameters()]
        init = {k: meta_params[k].to(dtype) for k in names}
        return PopulationState.from_params(init, len(scratch_seeds))
    stacked = scratch_stacked(spec, scratch_seeds)
    return PopulationState.from_stacked({k: v.to(dtype) for k, v in stacked.items()})


def scratch_inits(spec: ModelSpec, seeds: Sequence[int]) -> list[Params]:
    """``[scratch_params(spec, s) for s in seeds]``, the same weights (``scratch_stacked``)."""
    stacked = scratch_stacked(spec, seeds)
    return [{k: v[i] for k, v in stacked.items()} for i in range(len(seeds))]


def scratch_stacked(spec: ModelSpec, seeds: Sequence[int]) -> Params:
    """``scratch_params(spec, s)`` of every seed, stacked, without building a model per seed
    where the model allows: building is most of the cost (a sweep's scratch units start
    thousands of members), and re-running each module's ``reset_parameters`` in ``modules()``
    order, after seeding the generator, draws what a fresh build draws for most models. Each
    reset is copied straight into its row (a clone per parameter and a stack cost as much as
    the reset). Whether it does for ``spec`` is checked against real builds of the first two
    seeds; a model it does not hold for is built per seed."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 4:
        built = [scratch_params(spec, s) for s in seeds]
        return {k: torch.stack([p[k] for p in built]) for k in built[0]}
    first = [scratch_params(spec, s) for s in seeds[:2]]
    model = build_model(spec)
    named = [(k, v.detach()) for k, v in model.named_parameters()]
    out = {k: torch.empty((len(seeds), *v.shape), dtype=v.dtype) for k, v in named}
    draws = _reset_draws(model, out)

    def reset(row: int, seed: int) -> None:
        torch.default_generator.manual_seed(seed)
        with torch.no_grad():
            for draw in draws:
                draw(row)

    for i, want in enumerate(first):
        reset(i, seeds[i])
        if out.keys() != want.keys() or not all(torch.equal(out[k][i], want[k]) for k in want):
            built = first + [scratch_params(spec, s) for s in seeds[2:]]
            return {k: torch.stack([p[k] for p in built]) for k in first[0]}
    for i, s in enumerate(seeds[2:], 2):
        reset(i, s)
    return out


def _reset_draws(model: nn.Module, out: Params) -> list[Callable[[int], None]]:
    """Per module with ``reset_parameters``, in ``modules()`` order, what re-runs it into row
    ``row`` of ``out`` (stacked parameters by name), then a copy of any parameter no reset
    covers. A plain ``nn.Linear`` / ``nn.Conv*`` draws its weight and bias straight into the
    row with the bounds its ``reset_parameters`` uses (``kaiming_uniform_(a=sqrt(5))``, then
    ``U(+-1/sqrt(fan_in))``): the same draws of the same generator, without the reset's Python
    (half a sweep's scratch set-up) or a copy; any other module resets itself and its
    parameters are copied. ``scratch_stacked`` checks the result against real builds."""
    names = {id(v): k for k, v in model.named_parameters()}
    draws: list[Callable[[int], None]] = []
    covered: set[str] = set()
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if not callable(reset):
            continue
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if (
            type(m) in _PLAIN
            and isinstance(weight, torch.Tensor)
            and weight.dim() >= 2
            and weight.shape[1] > 0
            and (bias is None or isinstance(bias, torch.Tensor))
        ):
            fan_in = int(weight[0].numel())
            gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
            w = names[id(weight)]
            b = names[id(bias)] if bias is not None else None
            draws.append(
                _uniform_draw(
                    out, w, b, math.sqrt(3.0) * (gain / math.sqrt(fan_in)), 1 / math.sqrt(fan_in)
                )
            )
            covered |= {w} | ({b} if b else set())
            continue
        own = [(names[id(v)], v.detach()) for v in m.parameters() if id(v) in names]
        draws.append(_reset_copy(out, reset, own))
        covered |= {k for k, _ in own}
    rest = [(k, v.detach()) for k, v in model.named_parameters() if k not in covered]
    if rest:
        draws.append(_reset_copy(out, lambda: None, rest))
    return draws


def _uniform_draw(
    out: Params, w: str, b: str | None, wb: float, bb: float
) -> Callable[[int], None]:
    def draw(row: int) -> None:
        out[w][row].uniform_(-wb, wb)
        if b is not None:
            out[b][row].uniform_(-bb, bb)

    return draw


def _reset_copy(
    out: Params, reset: Callable[[], None], own: Sequence[tuple[str, torch.Tensor]]
) -> Callable[[int], None]:
    def draw(row: int) -> None:
        reset()
        for k, v in own:
            out[k][row].copy_(v)

    return draw


_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def exploit_worst(
    copy: Callable[[int, int], None],
    val: np.ndarray,
    k: int,
    rng: np.random.Generator,
    explore: Callable[[int, int], None],
) -> list[tuple[int, int]]:
    """The worst ``k`` members (by ``val``, ties by index) each copy (``copy(src, dst)``) a
    random member of the best ``k``; ``explore(src, dst)`` runs right after each copy (it sets
    ``dst``'s new config, so its random draws interleave with the source draws). Returns the
    ``(src, dst)`` pairs."""
    m = len(val)
    if k < 1 or m < 2:
        return []
    order = np.argsort(val, kind="stable")
    top, bottom = [int(i) for i in order[:k]], [int(i) for i in order[m - k :]]
    pairs = []
    for dst in bottom:
        src = top[int(rng.integers(0, len(top)))]  # what rng.choice(top) draws, 5x cheaper
        copy(src, dst)
        explore(src, dst)
        pairs.append((src, dst))
    return pairs


@dataclass
class Best:
    """A population's best snapshot: which member, its val loss, its weights, and its config
    with ``steps`` = the steps those weights were trained."""

    member: int
    val_loss: float
    params: Params
    config: Config
    at: int  # the evaluation that took the snapshot (the earliest wins ties)


class Population:
    """Members of one model candidate (``name``), their optimizer state, configs, seeds and
    best snapshots (see the module docstring for the semantics)."""

    _state: PopulationState  # rows in ``_layout``'s order (``state``: in member order)

    def __init__(
        self,
        spec: ModelSpec,
        kind: str,
        name: str,
        configs: Sequence[Mapping[str, Any]],
        seeds: Sequence[int],
        state: PopulationState,
        *,
        horizon: int | None = None,
        keep_best: bool = True,
        trainer: PopulationTrainer | None = None,
    ) -> None:
        """``trainer``: another population's of the same ``spec`` and ``kind`` to share (a
        trainer holds no member state; building its model is most of a small population's
        set-up, and batched sweeps slice thousands of populations out of one)."""
        self.spec, self.kind, self.name = spec, kind, name
        self.configs: list[Config] = [dict(c) for c in configs]
        self.seeds = [int(s) for s in seeds]
        self._layout = RowLayout(len(self.configs))
        self.state = state
        self.horizon, self.keep_best = horizon, keep_best
        self.trainer = (
            trainer if trainer is not None else PopulationTrainer(build_model(spec), kind)
        )
        n, dev = len(self.configs), state.step.device
        self.best_params: Params = (
            {k: v.clone() for k, v in state.params.items()} if keep_best else {}
        )
        self.best_val = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        self.best_step = torch.zeros(n, dtype=torch.int64, device=dev)
        self.best_at = torch.zeros(n, dtype=torch.int64, device=dev)
        self.best_configs: list[Config] = [dict(c) for c in self.configs]
        self.last_val = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        self.last_acc: torch.Tensor | None = None
        self.evaluations = 0
        self._hp: tuple[int, MemberHParams] | None = None
        self._owns_state = False  # ``train`` copies ``state`` once, then trains in place

    @property
    def state(self) -> PopulationState:
        """Weights, moments and steps in member order. Training keeps the rows grouped by the
        trainer's member kinds (``layout`` module); reading ``state`` puts them back in member
        order, a gather, so the population's own methods read members through ``_rows_of``."""
        pos = self._pos(self._state.step.device)
        if pos is not None:
            self._state = self._state.index(pos)
            self._layout.reset()
        return self._state

    @state.setter
    def state(self, state: PopulationState) -> None:
        self._state = state
        self._layout.reset()

    def _pos(self, device: torch.device) -> torch.Tensor | None:
        """Each member's row of ``_state`` on ``device`` (``None``: every member at its own)."""
        pos = self._layout.pos
        return None if pos is None else pos.to(device)

    def _rows_of(self, members: torch.Tensor) -> torch.Tensor:
        """The rows of ``_state`` that hold ``members`` (indices)."""
        pos = self._pos(members.device)
        return members if pos is None else pos[members]

    @property
    def n_members(self) -> int:
        return len(self.configs)

    def set_config(self, member: int, config: Mapping[str, Any]) -> None:
        self.configs[member] = dict(config)
        self._hp = None

    def hparams(self, n_train: int) -> MemberHParams:
        """The members' hyperparameter tensors (rebuilt only after a config changed)."""
        if self._hp is None or self._hp[0] != n_train:
            hp = MemberHParams.from_configs(self.configs, self.seeds, n_train, self.horizon)
            self._hp = (n_train, hp)
        return self._hp[1]

    def train(
        self, x: torch.Tensor, y: torch.Tensor, n_steps: int, per_member_data: bool = False
    ) -> torch.Tensor:
        """Train every member with steps left for up to ``n_steps`` steps; returns the steps
        each member took."""
        n_train = int(x.shape[1] if per_member_data else x.shape[0])
        hp = self.hparams(n_train)
        if not self._owns_state:  # the constructor's (or restore's) tensors stay the caller's
            self.state, self._owns_state = self.state.index(slice(None)), True
        keys = self.trainer.group_keys(hp, n_train)
        if keys is not None:
            self._arrange(keys)
        rows = self._layout.rows
        if rows is not None:  # the members' hyperparameters and data in row order
            hp = hp.index(rows)
            if per_member_data:
                r = rows.to(x.device)
                x, y = x[r], y[r]
        state = self._state
        before = state.step.clone()
        active = torch.nonzero(hp["steps"].to(state.step.device) > state.step).flatten()
        if active.numel() > 0:
            members = None if active.numel() == self.n_members else active.cpu()
            self._state = self.trainer.train(
                state, hp, x, y, n_steps, per_member_data, members=members, inplace=True
            )
        taken = self._state.step - before
        pos = self._pos(taken.device)
        return taken if pos is None else taken[pos]

    def _arrange(self, keys: torch.Tensor) -> None:
        """Group the rows by ``keys`` (``RowLayout.arrange``), moving the rows that move."""
        moves = self._layout.arrange(keys)
        if moves is None:
            return
        st = self._state
        dst, src = (t.to(st.step.device) for t in moves)
        for d in (st.params, st.m, st.v):
            for t in d.values():
                t.index_copy_(0, dst, t.index_select(0, src))
        st.step.index_copy_(0, dst, st.step.index_select(0, src))

    def copy_members(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Each ``(src, dst)``: member ``dst`` takes ``src``'s weights, optimizer state and step,
        all read before any is written (so no ``dst`` may be another pair's ``src``)."""
        if not pairs:
            return
        st = self._state
        src = self._rows_of(torch.tensor([a for a, _ in pairs], device=st.step.device))
        dst = self._rows_of(torch.tensor([b for _, b in pairs], device=st.step.device))
        for d in (st.params, st.m, st.v):
            for t in d.values():  # (a third cheaper than ``t[dst] = t[src]`` on the CPU)
                t.index_copy_(0, dst, t.index_select(0, src))
        st.step.index_copy_(0, dst, st.step.index_select(0, src))

    def copy_member(self, src: int, dst: int) -> None:
        """Member ``dst`` takes ``src``'s weights, optimizer state and step (a PBT exploit)."""
        at = self._rows_of(torch.tensor([src, dst])).tolist()
        self._state.copy_member(*at)

    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, per_member_data: bool = False
    ) -> dict[str, torch.Tensor]:
        """Per-member val ``loss`` (float64, NaN kept) and ``accuracy`` (classification); sets
        ``last_val`` (NaN and inf as inf) and updates the best snapshots."""
        rows, st = self._layout.rows, self._state
        if rows is not None and per_member_data:
            r = rows.to(x.device)
            x, y = x[r], y[r]
        ev = self.trainer.evaluate(st.params, x, y, per_member_data)
        pos = self._pos(ev["loss"].device)
        if pos is not None:  # back in member order
            ev = {k: v[pos] for k, v in ev.items()}
        loss = ev["loss"].double().to(self.best_val.device)
        val = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
        self.last_val = val
        self.last_acc = ev["accuracy"].double() if "accuracy" in ev else None
        if self.keep_best:
            better = val < self.best_val
            idx = torch.nonzero(better).flatten()
            if idx.numel() > 0:
                at = self._rows_of(idx)
                for k, v in st.params.items():  # (cheaper than a boolean index_put)
                    self.best_params[k].index_copy_(0, idx, v.index_select(0, at))
                self.best_val = torch.where(better, val, self.best_val)
                steps = st.step[self._rows_of(torch.arange(len(val), device=st.step.device))]
                self.best_step = torch.where(better, steps, self.best_step)
                self.best_at = torch.where(
                    better, torch.full_like(self.best_at, self.evaluations), self.best_at
                )
                for i in idx.tolist():
                    self.best_configs[i] = dict(self.configs[i])
        self.evaluations += 1
        out = {"loss": loss}
        if self.last_acc is not None:
            out["accuracy"] = self.last_acc
        return out

    def exploit(
        self, rng: np.random.Generator, perturb: Perturb, rule: ExploitRule
    ) -> list[dict[str, Any]]:
        """The worst members copy the best (module docstring); returns the events."""
        events: list[dict[str, Any]] = []

        def explore(src: int, dst: int) -> None:
            old = self.configs[dst]
            new = (
                old
                if dst in rule.pinned
                else {**perturb(self.configs[src], rng), "model": self.name}
            )
            self.set_config(dst, new)
            events.append(
                {"kind": "member_exploit", "src": src, "dst": dst, "old": old, "new": new}
            )

        exploit_worst(
            self.copy_member, self.last_val.cpu().numpy(), rule.count(self.n_members), rng, explore
        )
        return events

    def best_member(self) -> int:
        """The member with the lowest snapshot (earliest on ties, then the lowest index)."""
        return self.ranked()[0]

    def ranked(self, lo: int = 0, hi: int | None = None) -> list[int]:
        """Members ``lo .. hi - 1`` by their snapshot's val loss, then the evaluation that took
        it, then index (``lo``-based: 0 is ``lo``); the first is ``best_member``'s rule."""
        hi = self.n_members if hi is None else hi
        val = self.best_val[lo:hi].cpu().tolist()
        at = self.best_at[lo:hi].cpu().tolist()
        return sorted(range(hi - lo), key=lambda i: (val[i], at[i], i))

    def best(self, member: int | None = None) -> Best:
        """The best snapshot (of ``member``, or of the population)."""
        m = self.best_member() if member is None else member
        if self.keep_best:
            params = {k: v[m].detach().clone() for k, v in self.best_params.items()}
        else:
            row = int(self._rows_of(torch.tensor([m]))[0])
            params = {k: v[row].detach().clone() for k, v in self._state.params.items()}
        return Best(
            m,
            float(self.best_val[m]),
            params,
            {**self.best_configs[m], "steps": int(self.best_step[m])},
            int(self.best_at[m]),
        )

    def score(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """``test_loss`` (and ``test_accuracy``) of one set of weights, e.g. ``best().params``."""
        one = {k: v.unsqueeze(0) for k, v in params.items()}
        return {f"test_{k}": float(v[0]) for k, v in self.trainer.evaluate(one, x, y).items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything tensor-valued, on the CPU, for ``torch.save`` (``weights_only`` loadable)."""
        out = {f"state.{k}": v.cpu() for k, v in self.state.state_dict().items()}
        out.update({f"best.{k}": v.cpu() for k, v in self.best_params.items()})
        out |= {
            "best_val": self.best_val.cpu(),
            "best_step": self.best_step.cpu(),
            "best_at": self.best_at.cpu(),
            "last_val": self.last_val.cpu(),
            "evaluations": torch.tensor(self.evaluations),
        }
        return out

    def restore(
        self, t: Mapping[str, torch.Tensor], best_configs: Sequence[Mapping[str, Any]]
    ) -> None:
        """Load what ``tensors`` saved (the configs and seeds are set at construction)."""
        self.state = PopulationState.from_state_dict(
            {k[6:]: v for k, v in t.items() if k.startswith("state.")}
        )
        self._owns_state = False
        self.best_params = {k[5:]: v.clone() for k, v in t.items() if k.startswith("best.")}
        self.best_val, self.last_val = t["best_val"].clone(), t["last_val"].clone()
        self.best_step, self.best_at = t["best_step"].clone(), t["best_at"].clone()
        self.evaluations = int(t["evaluations"])
        self.best_configs = [dict(c) for c in best_configs]

    def to(self, device: torch.device | str) -> Population:
        """Move weights, optimizer state and snapshots to ``device`` (in place; returns self)."""
        self.state = self.state.to(device)
        self.best_params = {k: v.to(device) for k, v in self.best_params.items()}
        for name in ("best_val", "best_step", "best_at", "last_val"):
            setattr(self, name, getattr(self, name).to(device))
        return self


@dataclass
class Evaluation:
    """What ``run_schedule`` yields after each stop."""

    step: int  # the schedule's step (steps since the run started)
    taken: torch.Tensor  # steps each member took since the previous evaluation
    loss: torch.Tensor  # val loss per member (NaN kept)
    accuracy: torch.Tensor | None
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training and evaluating this interval


def run_schedule(
    pop: Population,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    stops: Sequence[int],
    *,
    start: int = 0,
    per_member_data: bool = False,
    exploit: Exploit | None = None,
) -> Iterator[Evaluation]:
    """Train to each of ``stops`` in turn (steps since the run started, from ``start``),
    evaluate, and, except after the last stop, let the population exploit; yields each
    ``Evaluation`` (the population is checkpointable between yields)."""
    at = start
    for i, stop in enumerate(stops):
        t0 = time.perf_counter()
        if stop > at:
            taken = pop.train(*train, stop - at, per_member_data=per_member_data)
        else:
            taken = torch.zeros(pop.n_members, dtype=torch.int64, device=pop.best_step.device)
        at = stop
        ev = pop.evaluate(*val, per_member_data=per_member_data)
        seconds = time.perf_counter() - t0
        events = []
        if exploit is not None and i < len(stops) - 1:
            events = pop.exploit(exploit.rng(stop), exploit.perturb, exploit.rule)
        yield Evaluation(stop, taken, ev["loss"], ev.get("accuracy"), events, seconds)


def every(interval: int, end: int, start: int = 0) -> list[int]:
    """Stops every ``interval`` steps from ``start`` to ``end`` (the last one at ``end``)."""
    return list(range(start + interval, end, interval)) + ([end] if end > start else [])
