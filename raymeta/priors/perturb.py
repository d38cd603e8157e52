"""PBT's explore step (``Prior.perturb``) for many members at once.

Why: a sweep batch perturbs ~200 members per evaluation, and one Python call per member and
hyperparameter (distribution lookups, unit-coordinate conversions, a dict per config) cost
more than the arithmetic. ``PerturbPlan`` does each hyperparameter for every member as numpy
arrays. The numbers stay those of the per-member rule, bit for bit: the same uniforms
(``DRAWS`` per hyperparameter, in space order: resample?, two sampling uniforms, the step's
sign), the same float operations in the same order (``+ - * /``, ``min``/``max`` and
half-to-even rounding are exact in numpy as in Python), and ``math.log`` / ``math.exp`` /
``trunc_normal_unit`` called per value (numpy's own ``log`` / ``exp`` may round differently).

The rule (``Prior.perturb``'s docstring): each hyperparameter is resampled from the prior with
``resample_p`` (or when the config lacks it), else a numeric one moves one step (a quarter of
its distribution's spread on the unit coordinate, at least 0.01; an integer at least one) up
or down within the bounds, and a categorical one is kept; the conditional parent goes first so
its children use the sub-prior of its new value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from raymeta.priors.dists import CategoricalDist, NumericDist, trunc_normal_unit
from raymeta.priors.space import Categorical, Float, Int

if TYPE_CHECKING:
    from raymeta.priors.prior import Prior

DRAWS = (0, 0, 0, 2)  # per hyperparameter (``draws.Ops``): three uniforms, then a coin


class PerturbPlan:
    """A prior's explore step, compiled once: per hyperparameter its bounds, distributions and
    step sizes (per parent choice for a conditional child)."""

    def __init__(self, prior: Prior) -> None:
        self.prior = prior
        self.params = list(prior.space)
        self.order = prior.perturb_order()
        self.ops = DRAWS * len(self.params)
        cond = prior.conditional
        self.parent = cond.on if cond is not None else None
        self.sub: dict[str, dict[Any, NumericDist]] = {}  # child -> parent choice -> dist
        if cond is not None:
            for choice, dists in cond.dists.items():
                for name, d in dists.items():
                    self.sub.setdefault(name, {})[choice] = d

    def apply(
        self,
        configs: Sequence[Mapping[str, Any]],
        uniforms: np.ndarray,
        coins: np.ndarray,
        resample_p: float = 0.25,
    ) -> list[dict[str, Any]]:
        """The perturbed ``configs``: member ``i`` with ``uniforms[i, j]`` (three) and
        ``coins[i, j]`` for the ``j``-th hyperparameter of the space."""
        n = len(configs)
        new: dict[str, list[Any]] = {}
        for j in self.order:
            p = self.params[j]
            r, a, b = uniforms[:, j, 0], uniforms[:, j, 1], uniforms[:, j, 2]
            present = np.fromiter((p.name in c for c in configs), dtype=bool, count=n)
            resample = ~present | (r < resample_p)
            if isinstance(p, Categorical):
                new[p.name] = self._categorical(p, configs, a, resample)
            else:
                sign = np.where(coins[:, j] == 0, -1.0, 1.0)
                dists = self._dists(p.name, new.get(self.parent or "", []), n)
                new[p.name] = self._numeric(p, configs, dists, a, b, sign, resample)
        names = [self.params[j].name for j in self.order]
        return [{**c, **{k: new[k][i] for k in names}} for i, c in enumerate(configs)]

    def _dists(self, name: str, parent: list[Any], n: int) -> list[NumericDist]:
        """Each member's distribution of ``name`` given its (new) parent value."""
        marginal = self.prior.dists[name]
        assert isinstance(marginal, NumericDist)
        sub = self.sub.get(name)
        if sub is None or not parent:
            return [marginal] * n
        return [sub.get(v, marginal) for v in parent]

    def _categorical(
        self,
        p: Categorical,
        configs: Sequence[Mapping[str, Any]],
        a: np.ndarray,
        resample: np.ndarray,
    ) -> list[Any]:
        d = self.prior.dists[p.name]
        assert isinstance(d, CategoricalDist)
        cum = np.cumsum(d.probs)
        idx = np.minimum(np.searchsorted(cum, a * cum[-1], side="right"), len(d.probs) - 1)
        return [
            p.choices[k] if rs else c[p.name]
            for k, rs, c in zip(idx.tolist(), resample.tolist(), configs, strict=True)
        ]

    def _numeric(
        self,
        p: Float | Int,
        configs: Sequence[Mapping[str, Any]],
        dists: list[NumericDist],
        a: np.ndarray,
        b: np.ndarray,
        sign: np.ndarray,
        resample: np.ndarray,
    ) -> list[Any]:
        rs = resample.tolist()
        # resampled: ``NumericDist.unit_from_uniforms`` (b, or the truncated normal's quantile)
        u = [
            ((float(bb) if aa >= d.weight else trunc_normal_unit(d.mean, d.std, bb)) if r else 0.0)
            for aa, bb, d, r in zip(a.tolist(), b.tolist(), dists, rs, strict=True)
        ]
        # moved one step: ``to_unit(clip(old))``, then the step, within [0, 1]
        old = np.array([0.0 if r else float(c[p.name]) for c, r in zip(configs, rs, strict=True)])
        step = np.array([max(0.25 * d.spread(), 0.01) for d in dists])
        moved = np.minimum(np.maximum(to_unit(p, clip(p, old)) + sign * step, 0.0), 1.0)
        unit = np.where(resample, np.array(u), moved)
        if isinstance(p, Float) and not (type(p.low) is float and type(p.high) is float):
            return [p.from_unit(x) for x in unit.tolist()]  # its clamps may return an int bound
        vals = from_unit(p, unit)
        if isinstance(p, Int):
            same = ~resample & (vals == old)
            if same.any():
                vals = np.where(same, clip(p, vals + sign), vals)
            return [int(v) for v in vals.tolist()]
        return [float(v) for v in vals.tolist()]


def clip(p: Float | Int, x: np.ndarray) -> np.ndarray:
    """``p.clip`` of each value (an ``Int`` rounds half to even first, as ``round``)."""
    if isinstance(p, Int):
        x = np.rint(x)
    return np.minimum(np.maximum(x, p.low), p.high).astype(np.float64)


def to_unit(p: Float | Int, x: np.ndarray) -> np.ndarray:
    """``p.to_unit`` of each value (``math.log`` per value on a log scale)."""
    if not p.log:
        return (x - p.low) / (p.high - p.low)
    lo, hi = math.log(p.low), math.log(p.high)
    return (np.array([math.log(v) for v in x.tolist()]) - lo) / (hi - lo)


def from_unit(p: Float | Int, u: np.ndarray) -> np.ndarray:
    """``p.from_unit`` of each unit coordinate (``math.exp`` per value on a log scale); an
    ``Int``'s are whole floats."""
    u = np.minimum(np.maximum(u, 0.0), 1.0)
    if p.log:
        lo, hi = math.log(p.low), math.log(p.high)
        e = np.array([math.exp(v) for v in (lo + u * (hi - lo)).tolist()])
        x = np.minimum(np.maximum(e, p.low), p.high)
    else:
        x = p.low + u * (p.high - p.low)
    return clip(p, x) if isinstance(p, Int) else x
