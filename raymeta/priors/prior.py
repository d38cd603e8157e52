"""Priors over a search space: a distribution per hyperparameter (``dists.py``), optionally
conditional, optionally mixed with a joint component (``joint.py``).

A numeric parameter's distribution lives on its unit coordinate (see ``space.py``) and is a
mixture ``w * TruncNormal(mean, std; [0, 1]) + (1 - w) * Uniform[0, 1]``. ``w = 0`` is the broad
(uniform) prior; a fitted prior keeps ``w < 1`` so every value of the broad space stays possible
(the shrinkage toward broad that protects against tasks unlike the meta-val ones). Categorical
parameters carry explicit probabilities.

Conditional structure (``Conditional``): good learning rates depend on the optimizer (Adam
normalises its steps, SGD does not), so one categorical *parent* (``on``, e.g. ``optimizer``)
may carry, per choice, its own distributions for some numeric *children* (e.g. ``lr``,
``weight_decay``). Sampling draws the parent first and each child from the parent value's
sub-prior; ``log_prob`` and ``perturb`` use the same sub-prior. ``dists`` always holds a
*marginal* (pooled) distribution for every parameter, which is what per-parameter consumers
that cannot express dependence (Ray Tune domains, ``priors show``) use. In ``priors.json``::

    "conditional": {"on": "optimizer",
                    "dists": {"sgd": {"lr": {...}, "weight_decay": {...}}, "adam": {...}}}

Every sample consumes exactly two uniforms per parameter in space order (a child's uniforms are
mapped after its parent's value is known), which makes sampling reproducible for a seed and lets
Ray Tune's own random state drive the same code (``raymeta.orchestration.tune.space``).

Joint component (``joint``, see ``joint.py``): a fitted prior is a mixture ``joint.weight`` x a
kernel mixture over whole good configs + the rest x the factorised prior above. ``sample``,
``log_prob`` and ``perturb`` use the mixture; ``dists`` / ``value_from_uniforms`` stay the
factorised marginals for per-parameter consumers. With a joint component each sample draws
``2 + len(space)`` further uniforms after the factorised ones.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymeta.errors import ConfigError
from raymeta.priors.dists import (
    CategoricalDist,
    Dist,
    NumericDist,
    broad_dist,
    dist_from_dict,
)

__all__ = ["CategoricalDist", "Conditional", "Dist", "NumericDist", "Prior", "broad_prior"]
from raymeta.priors.draws import replay
from raymeta.priors.joint import Joint
from raymeta.priors.perturb import DRAWS, PerturbPlan
from raymeta.priors.space import Categorical, Float, Int, SearchSpace


@dataclass(frozen=True)
class Conditional:
    """Per-choice numeric sub-priors of some parameters given a categorical parent ``on``."""

    on: str
    dists: Mapping[Any, Mapping[str, NumericDist]]

    def children(self) -> set[str]:
        return {n for sub in self.dists.values() for n in sub}

    def to_dict(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "dists": {
                str(c): {n: d.to_dict() for n, d in sub.items()} for c, sub in self.dists.items()
            },
        }


def _check_conditional(space: SearchSpace, cond: Conditional) -> Conditional:
    if cond.on not in space or not isinstance(space[cond.on], Categorical):
        raise ConfigError(f"conditional prior: parent {cond.on!r} is not a categorical parameter")
    parent = space[cond.on]
    assert isinstance(parent, Categorical)
    by_name = {str(c): c for c in parent.choices}
    out: dict[Any, dict[str, NumericDist]] = {}
    for choice, sub in cond.dists.items():
        if str(choice) not in by_name:
            raise ConfigError(
                f"conditional prior: {choice!r} is not a choice of {cond.on!r} {list(parent.choices)}"
            )
        for n, d in sub.items():
            if n not in space or isinstance(space[n], Categorical) or n == cond.on:
                raise ConfigError(f"conditional prior: {n!r} is not a numeric parameter")
            if not isinstance(d, NumericDist):
                raise ConfigError(f"conditional prior for {n!r} must be numeric")
        out[by_name[str(choice)]] = dict(sub)
    return Conditional(cond.on, out)


def _conditional_from_dict(space: SearchSpace, d: Mapping[str, Any]) -> Conditional:
    try:
        on = str(d["on"])
        dists = {
            str(c): {str(n): dist_from_dict(space[n], v) for n, v in sub.items()}
            for c, sub in d["dists"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"conditional prior is malformed ({exc})") from None
    return Conditional(on, dists)  # type: ignore[arg-type]


class Prior:
    """A distribution per hyperparameter of ``space`` (missing ones default to broad), plus an
    optional ``conditional`` structure (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        dists: Mapping[str, Dist] | None = None,
        conditional: Conditional | None = None,
        joint: Joint | None = None,
    ):
        dists = dict(dists or {})
        unknown = set(dists) - set(space.names())
        if unknown:
            raise ConfigError(
                f"prior has distributions for unknown hyperparameter(s): {', '.join(sorted(unknown))}"
            )
        self.space = space
        self.dists: dict[str, Dist] = {}
        for p in space:
            d = dists.get(p.name, broad_dist(p))
            if isinstance(p, Categorical) != isinstance(d, CategoricalDist):
                raise ConfigError(f"prior for {p.name!r} does not match its parameter type")
            if (
                isinstance(d, CategoricalDist)
                and isinstance(p, Categorical)
                and len(d.probs) != len(p.choices)
            ):
                raise ConfigError(
                    f"prior for {p.name!r} has {len(d.probs)} probabilities for {len(p.choices)} choices"
                )
            self.dists[p.name] = d
        checked = _check_conditional(space, conditional) if conditional is not None else None
        self.conditional = checked if checked is not None and checked.dists else None
        self.joint = joint.check(space) if joint is not None and joint.weight > 0 else None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Prior)
            and self.space == other.space
            and self.dists == other.dists
            and self.conditional == other.conditional
            and self.joint == other.joint
        )

    def __repr__(self) -> str:
        return f"Prior({self.dists!r}, conditional={self.conditional!r}, joint={self.joint!r})"

    def dist(self, name: str, given: Mapping[str, Any] | None = None) -> Dist:
        """The distribution of ``name`` given the other values in ``given`` (marginal without)."""
        c = self.conditional
        if c is not None and given is not None and c.on in given:
            sub = c.dists.get(given[c.on], {})
            if name in sub:
                return sub[name]
        return self.dists[name]

    def value_from_uniforms(
        self, name: str, a: float, b: float, given: Mapping[str, Any] | None = None
    ) -> Any:
        """Map two uniforms to a value of ``name`` (the single sampling primitive); ``given``
        holds already-drawn values (the conditional parent's selects a sub-prior)."""
        p, d = self.space[name], self.dist(name, given)
        if isinstance(p, Categorical):
            cum = self.cumulative[name]  # ``d.index_from_uniform(a)``, a twentieth of its cost
            return p.choices[min(bisect.bisect_right(cum, a * cum[-1]), len(cum) - 1)]
        assert isinstance(d, NumericDist)
        return p.from_unit(d.unit_from_uniforms(a, b))

    @functools.cached_property
    def cumulative(self) -> dict[str, list[float]]:
        """Each categorical parameter's cumulative probabilities: the sequential sums
        ``np.cumsum`` gives ``dists.index_from_uniform`` on every draw (sampling a scratch unit's
        members draws thousands), computed once (categorical priors are never conditional)."""
        return {
            n: list(itertools.accumulate(d.probs))
            for n, d in self.dists.items()
            if isinstance(d, CategoricalDist)
        }

    def perturb_order(self) -> list[int]:
        """Space indices with the conditional parent first (randomness stays in space order)."""
        names = self.space.names()
        if self.conditional is None:
            return list(range(len(names)))
        j = names.index(self.conditional.on)
        return [j] + [i for i in range(len(names)) if i != j]

    def sample(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` configs, each within the space's bounds (reproducible for a given ``rng`` state)."""
        names = self.space.names()
        u = rng.random((int(n), len(names), 2))
        v = rng.random((int(n), 2 + len(names))) if self.joint is not None else None
        out = []
        for i in range(int(n)):
            if v is not None and v[i, 0] < self.joint.weight:  # type: ignore[union-attr]
                out.append(self._joint_sample(u[i], v[i]))
                continue
            c: dict[str, Any] = {}
            for j in self.perturb_order():
                c[names[j]] = self.value_from_uniforms(names[j], u[i, j, 0], u[i, j, 1], c)
            out.append({nm: c[nm] for nm in names})
        return out

    def _joint_sample(self, u: np.ndarray, v: np.ndarray) -> dict[str, Any]:
        """One config from the kernel around a centre chosen by ``v[1]``: categorical values are
        kept when ``v[2 + j] < keep`` (else drawn from the marginal), numeric ones move by the
        kernel (``u[j, 1]``)."""
        jt = self.joint
        assert jt is not None
        centre = jt.centres[jt.centre_index(float(v[1]))]
        c: dict[str, Any] = {}
        for j, p in enumerate(self.space):
            if isinstance(p, Categorical):
                keep = v[2 + j] < jt.keep
                c[p.name] = (
                    centre[p.name] if keep else self.value_from_uniforms(p.name, u[j, 0], u[j, 1])
                )
            else:
                cu = p.to_unit(float(centre[p.name]))
                c[p.name] = p.from_unit(jt.unit_from_uniform(cu, float(u[j, 1])))
        return c

    def _joint_log_prob(self, config: Mapping[str, Any]) -> float:
        jt = self.joint
        assert jt is not None
        terms = []
        for centre, pk in zip(jt.centres, jt.probs, strict=True):
            lp = math.log(pk) if pk > 0 else -math.inf
            for p in self.space:
                v = config[p.name]
                if isinstance(p, Categorical):
                    d = self.dists[p.name]
                    assert isinstance(d, CategoricalDist)
                    pr = (1.0 - jt.keep) * d.probs[p.choices.index(v)] + (
                        jt.keep if v == centre[p.name] else 0.0
                    )
                    lp += math.log(pr) if pr > 0 else -math.inf
                else:
                    lp += jt.log_kernel(p.to_unit(float(centre[p.name])), p.to_unit(float(v)))
            terms.append(lp)
        return _logsumexp(terms)

    def log_prob(self, config: Mapping[str, Any]) -> float:
        """Log density (numeric: on the unit coordinates) + log probability (categorical)."""
        for p in self.space:
            if p.name not in config:
                raise ConfigError(f"config is missing hyperparameter {p.name!r}")
            if not p.contains(config[p.name]):
                return -math.inf
        fact = self._factorised_log_prob(config)
        if self.joint is None:
            return fact
        w = self.joint.weight
        return _logsumexp(
            [
                math.log(w) + self._joint_log_prob(config),
                math.log1p(-w) + fact if w < 1.0 else -math.inf,
            ]
        )

    def _factorised_log_prob(self, config: Mapping[str, Any]) -> float:
        total = 0.0
        for p in self.space:
            v = config[p.name]
            d = self.dist(p.name, config)
            if isinstance(p, Categorical):
                assert isinstance(d, CategoricalDist)
                pr = d.probs[p.choices.index(v)]
                total += math.log(pr) if pr > 0 else -math.inf
            else:
                assert isinstance(d, NumericDist)
                total += d.log_density(p.to_unit(float(v)))
        return total

    def perturb(
        self, config: Mapping[str, Any], rng: np.random.Generator, resample_p: float = 0.25
    ) -> dict[str, Any]:
        """PBT explore: each hyperparameter is resampled from the prior with ``resample_p``,
        otherwise numeric ones move one step (a quarter of the prior's spread on the unit
        coordinate, at least one integer) up or down, staying inside the bounds; categorical ones
        are kept. The conditional parent is decided first, so its children move within (or are
        resampled from) the sub-prior of its new value. Keys outside the space pass through
        unchanged. Draws, per hyperparameter in space order, ``rng.random()`` three times and
        ``rng.integers(0, 2)`` (``perturb.DRAWS``, replayed at once by ``draws.replay``).

        One member at a time (a Tune trial's exploit); ``perturb_many`` does a batch's members
        at once, with the same numbers (tested against this)."""
        params = list(self.space)
        u, coins = replay(rng, DRAWS * len(params))
        signs = [(-1.0, 1.0)[c] for c in coins]
        out = dict(config)
        for j in self.perturb_order():
            p, (r, a, b), sign = params[j], u[3 * j : 3 * j + 3], signs[j]
            if p.name not in config or r < resample_p:
                out[p.name] = self.value_from_uniforms(p.name, a, b, out)
                continue
            if isinstance(p, Categorical):
                continue
            d = self.dist(p.name, out)
            assert isinstance(d, NumericDist) and isinstance(p, Float | Int)
            x = p.to_unit(p.clip(float(config[p.name])))
            new = p.from_unit(min(max(x + sign * max(0.25 * d.spread(), 0.01), 0.0), 1.0))
            if isinstance(p, Int) and new == config[p.name]:
                new = p.clip(new + int(sign))
            out[p.name] = new
        return out

    def perturb_many(
        self,
        configs: Sequence[Mapping[str, Any]],
        uniforms: np.ndarray,
        coins: np.ndarray,
        resample_p: float = 0.25,
    ) -> list[dict[str, Any]]:
        """``perturb`` of many configs at once, given each one's draws: row ``i`` of
        ``uniforms`` / ``coins`` holds what ``perturb`` would draw for ``configs[i]``, as
        ``draws.replay(rng, self.perturb_plan.ops)`` returns them."""
        n, p = len(configs), len(self.space)
        return self.perturb_plan.apply(
            configs, uniforms.reshape(n, p, 3), coins.reshape(n, p), resample_p
        )

    @functools.cached_property
    def perturb_plan(self) -> PerturbPlan:
        """The explore step compiled for this prior (built on first use; priors are not
        changed after construction)."""
        return PerturbPlan(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "space": self.space.to_dict(),
            "dists": {k: d.to_dict() for k, d in self.dists.items()},
        }
        if self.conditional is not None:
            out["conditional"] = self.conditional.to_dict()
        if self.joint is not None:
            out["joint"] = self.joint.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prior:
        try:
            space = SearchSpace.from_dict(d["space"])
            dists = {
                str(k): dist_from_dict(space[k], v) for k, v in d["dists"].items() if k in space
            }
            missing = set(d["dists"]) - set(space.names())
            cond = d.get("conditional")
            joint = Joint.from_dict(d["joint"]) if d.get("joint") is not None else None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"prior is malformed ({exc})") from None
        if missing:
            raise ConfigError(
                f"prior has distributions for unknown hyperparameter(s): {', '.join(sorted(missing))}"
            )
        return cls(space, dists, _conditional_from_dict(space, cond) if cond else None, joint)


def broad_prior(space: SearchSpace) -> Prior:
    """Uniform on every unit coordinate and every categorical choice."""
    return Prior(space, {p.name: broad_dist(p) for p in space})


def _logsumexp(terms: list[float]) -> float:
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(t - top) for t in terms))
