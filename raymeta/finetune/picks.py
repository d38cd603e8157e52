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

from raymeta.core.models import footprint
from raymeta.errors import ConfigError
from raymeta.finetune.population import Best, Population
from raymeta.finetune.step import PopulationState
from raymeta.tasks import Task

PICKS = ("best", "refit", "soup")
SOUP_FRACTION = 0.25
SCORE_MEMORY = 1 << 28  # bytes of activations and inputs one stacked scoring may take

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


@dataclass(frozen=True)
class MemberSpan:
    """Members ``lo .. hi - 1`` of ``pop``: what a final pick reads of one population (a
    whole ``Population`` alone, a unit's share of a packed one in batched sweeps), read in
    place: a sweep batch concludes ~100 units, and copying a ``Population`` out of the packed
    one per unit cost more than the picks. Member indices are ``lo``-based: 0 is ``lo``."""

    pop: Population
    lo: int
    hi: int

    @classmethod
    def whole(cls, pop: Population) -> MemberSpan:
        return cls(pop, 0, pop.n_members)

    @classmethod
    def of(cls, pop: Population | MemberSpan) -> MemberSpan:
        """``pop`` itself if a span, else all of its members."""
        return cls.whole(pop) if isinstance(pop, Population) else pop

    @property
    def n_members(self) -> int:
        return self.hi - self.lo

    def ranked(self) -> list[int]:
        """The span's members in ``Population.ranked`` order (its first is the best member)."""
        return self.pop.ranked(self.lo, self.hi)

    def best_member(self) -> int:
        return self.ranked()[0]

    def best(self) -> Best:
        """The span's best snapshot (``Population.best`` of that member, index ``lo``-based)."""
        best = self.pop.best(self.lo + self.best_member())
        best.member -= self.lo
        return best

    def seed(self, member: int) -> int:
        return self.pop.seeds[self.lo + member]


def soup_members(pop: Population | MemberSpan) -> list[int]:
    """The members a soup averages: the best ``ceil(SOUP_FRACTION x n)`` (at least 2) by their
    best snapshot's val loss, finite ones only (ties by the population's own order)."""
    span = MemberSpan.of(pop)
    val = span.pop.best_val[span.lo : span.hi].tolist()
    order = [i for i in span.ranked() if math.isfinite(val[i])]
    return order[: soup_size(span.n_members)]


def soup_params(pop: Population | MemberSpan, members: Sequence[int]) -> Params:
    """The uniform average of ``members``' best snapshots."""
    span = MemberSpan.of(pop)
    idx = torch.tensor([span.lo + m for m in members], device=span.pop.best_val.device)
    return {k: v[idx].mean(dim=0) for k, v in span.pop.best_params.items()}


def score_all(
    jobs: Sequence[tuple[Population, Params, torch.Tensor, torch.Tensor]],
) -> list[dict[str, float]]:
    """``[pop.score(params, x, y) for pop, params, x, y in jobs]``, with one stacked evaluation
    (each job one member on its own data) per group of jobs that share a model (trainer) and
    data shapes, in chunks of at most ``SCORE_MEMORY`` bytes of activations and inputs: a
    sweep batch scores ~100 units' picks, and one evaluation per unit cost more than all of
    them stacked. A job alone in its group is ``pop.score`` (a plain forward)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, (pop, params, x, y) in enumerate(jobs):
        w = next(iter(params.values()))
        key = (id(pop.trainer), x.shape, x.dtype, y.shape, y.dtype, x.device, w.dtype)
        groups.setdefault(key, []).append(j)
    out: list[dict[str, float]] = [{} for _ in jobs]
    for idx in groups.values():
        pop, _, x, _ = jobs[idx[0]]
        size = 1
        if len(idx) > 1:  # members per chunk
            acts = footprint(pop.spec)[1]
            size = max(1, SCORE_MEMORY // max(1, (acts * len(x) + x.numel()) * x.element_size()))
        for at in range(0, len(idx), size):
            part = idx[at : at + size]
            if len(part) == 1:
                out[part[0]] = pop.score(*jobs[part[0]][1:])
                continue
            names = jobs[part[0]][1]
            params = {k: torch.stack([jobs[j][1][k] for j in part]) for k in names}
            xs = torch.stack([jobs[j][2] for j in part])
            ys = torch.stack([jobs[j][3] for j in part])
            ev = pop.trainer.evaluate(params, xs, ys, per_member_data=True)
            cols = {f"test_{k}": v.tolist() for k, v in ev.items()}
            for r, j in enumerate(part):
                out[j] = {k: float(v[r]) for k, v in cols.items()}
    return out


def tested(picks: list[Pick], spans: Sequence[MemberSpan], tasks: Sequence[Task]) -> list[Pick]:
    """``picks`` with their test metrics, scored together (``score_all``)."""
    jobs = [
        (s.pop, pk.params, t.x_test, t.y_test) for pk, s, t in zip(picks, spans, tasks, strict=True)
    ]
    for pk, test in zip(picks, score_all(jobs), strict=True):
        pk.test = test
    return picks


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
    span: MemberSpan,
    best: Best,
    start: PopulationState,
    n_train: int,
    data: tuple[torch.Tensor, torch.Tensor],
) -> tuple[Params, int]:
    """``best`` (of ``span``) trained from ``start`` on ``data`` (train + val; ``n_train`` rows of
    it are the train split) for the snapshot's steps; returns the weights and the steps spent."""
    x, y = data
    cfg, steps = refit_config(best, n_train, len(x))
    if steps < 1:
        return {k: v[0].clone() for k, v in start.params.items()}, 0
    pop = span.pop
    one = Population(
        pop.spec,
        pop.kind,
        pop.name,
        [cfg],
        [span.seed(best.member)],
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
    configs): the snapshot is kept (``fallback``). Uses no test data. The refit and the
    snapshot are scored on train + val in one stacked evaluation (``score_all``), so the two
    losses compared round alike."""
    return refit_picks([MemberSpan.whole(pop)], [start], [task], [refitted])[0]


def refit_picks(
    spans: Sequence[MemberSpan],
    starts: Sequence[PopulationState | None],
    tasks: Sequence[Task],
    refitted: Sequence[tuple[Params, int] | None],
    bests: Sequence[Best] | None = None,
) -> list[Pick]:
    """``refit_pick`` of each span on its task, the fits on train + val and the tests each
    scored together (``score_all``). ``bests``: the spans' ``best()``, where known already."""
    bests = [s.best() for s in spans] if bests is None else bests
    data = [train_and_val(t) for t in tasks]
    done = []
    for span, best, start, task, d, r in zip(
        spans, bests, starts, tasks, data, refitted, strict=True
    ):
        if r is None:
            if start is None:
                raise ValueError("refit_pick needs the initial weights or the refit's result")
            r = refit_params(span, best, start, len(task.x_train), d)
        done.append(r)
    fits = score_all(
        [(s.pop, r[0], *d) for s, r, d in zip(spans, done, data, strict=True)]
        + [(s.pop, b.params, *d) for s, b, d in zip(spans, bests, data, strict=True)]
    )
    picks = []
    for j, (best, (params, spent)) in enumerate(zip(bests, done, strict=True)):
        new, old = fits[j]["test_loss"], fits[len(spans) + j]["test_loss"]
        failed = not math.isfinite(new) or new > old
        kept = best.params if failed else params
        picks.append(Pick("refit", kept, dict(best.config), {}, spent, fallback=failed))
    return tested(picks, spans, tasks)


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
    return final_picks(rule, [MemberSpan.whole(pop)], [task], [init_state], soup_ok, [refitted])[0]


def final_picks(
    rule: str,
    spans: Sequence[MemberSpan],
    tasks: Sequence[Task],
    init_states: Sequence[InitState],
    soup_ok: bool,
    refitted: Sequence[tuple[Params, int] | None] | None = None,
    bests: Sequence[Best] | None = None,
) -> list[Pick]:
    """``final_pick`` of each span (the members holding a unit's best snapshot) on its task,
    tested together: one stacked evaluation per model and data shape (``score_all``), not one
    per unit (batched sweeps conclude ~100 units at once). ``bests``: the spans' ``best()``
    (member indices in the span), where the caller has them already (a copy of weights
    each)."""
    check_pick(rule)
    done = list(refitted) if refitted is not None else [None] * len(spans)
    bests = [s.best() for s in spans] if bests is None else bests
    if rule == "refit":
        starts = [
            init(b.member) if r is None else None
            for b, init, r in zip(bests, init_states, done, strict=True)
        ]
        return refit_picks(spans, starts, tasks, done, bests)
    picks = []
    for span, best in zip(spans, bests, strict=True):
        members = soup_members(span) if rule == "soup" and soup_ok else []
        if len(members) >= 2:
            params = soup_params(span, members)
            picks.append(Pick(rule, params, dict(best.config), {}, 0, len(members)))
        else:
            picks.append(Pick(rule, best.params, dict(best.config), {}))
    return tested(picks, spans, tasks)
