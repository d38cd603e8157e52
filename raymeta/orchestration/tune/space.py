"""Priors -> Ray Tune: ``param_space`` domains, PBT ``hyperparam_mutations``, ``points_to_evaluate``.

PBT refuses search algorithms, so the only ways to put knowledge into a population are the
initial ``param_space`` distributions, the mutation distributions and seeded starting points.
A learned prior becomes Tune ``Domain`` objects whose sampler runs the prior's own sampling code
on Tune's random state; a broad (uniform) one becomes the plain ``tune.loguniform`` /
``tune.lograndint`` / ``tune.choice`` domains. Pure functions: no ``ray.init`` needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search.sample import Categorical as TuneCategorical
from ray.tune.search.sample import Domain, Sampler
from ray.tune.search.sample import Float as TuneFloat
from ray.tune.search.sample import Integer as TuneInteger

from raymeta.finetune.hparams import fixed_names
from raymeta.priors import Categorical, CategoricalDist, Float, Int, NumericDist, Prior


class PriorSampler(Sampler):
    """Samples one hyperparameter from a raymeta ``Prior`` using Tune's random state."""

    def __init__(self, prior: Prior, name: str):
        self.prior, self.name = prior, name

    def sample(
        self, domain: Domain, config: Any = None, size: int = 1, random_state: Any = None
    ) -> Any:
        rng = random_state if random_state is not None else np.random.default_rng()
        u = rng.uniform(0.0, 1.0, size=(size, 2))
        items = [
            domain.cast(self.prior.value_from_uniforms(self.name, float(a), float(b))) for a, b in u
        ]
        return items if len(items) > 1 else items[0]

    def __str__(self) -> str:
        return f"Prior({self.name})"


def _is_broad(prior: Prior, name: str) -> bool:
    d = prior.dists[name]
    if isinstance(d, NumericDist):
        return d.weight == 0.0
    return isinstance(d, CategoricalDist) and len(set(d.probs)) == 1


def domain(prior: Prior, name: str) -> Domain:
    """The Tune domain of one hyperparameter."""
    p = prior.space[name]
    broad = _is_broad(prior, name)
    if isinstance(p, Categorical):
        if broad:
            return tune.choice(list(p.choices))
        dom: Domain = TuneCategorical(list(p.choices))
    elif isinstance(p, Float):
        if broad:
            return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        dom = TuneFloat(p.low, p.high)
    else:
        assert isinstance(p, Int)
        if broad:  # Tune's integer upper bound is exclusive
            return tune.lograndint(p.low, p.high + 1) if p.log else tune.randint(p.low, p.high + 1)
        dom = TuneInteger(p.low, p.high + 1)
    dom.set_sampler(PriorSampler(prior, name))
    return dom


def param_space(prior: Prior, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``Tuner(param_space=...)`` entries for every hyperparameter; ``fixed`` values win."""
    fixed = dict(fixed or {})
    return {
        p.name: fixed[p.name] if p.name in fixed else domain(prior, p.name) for p in prior.space
    } | {k: v for k, v in fixed.items() if k not in prior.space}


def hyperparam_mutations(prior: Prior, exclude: Iterable[str] | None = None) -> dict[str, Any]:
    """``PopulationBasedTraining(hyperparam_mutations=...)``: numeric ones resample from the prior
    (or get multiplied by PBT's perturbation factors; ``clip_explore`` keeps them in bounds),
    categorical ones are lists (PBT shifts to a neighbouring choice or resamples)."""
    skip = set(fixed_names() if exclude is None else exclude)  # e.g. the model: never mid-run
    out: dict[str, Any] = {}
    for p in prior.space:
        if p.name in skip:
            continue
        if isinstance(p, Categorical):
            if len(p.choices) > 1:
                out[p.name] = list(p.choices)
        else:
            out[p.name] = domain(prior, p.name)
    return out


def clip_explore(prior: Prior) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A PBT ``custom_explore_fn`` that clips perturbed values back into the space's bounds."""

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        for p in prior.space:
            if p.name in config and isinstance(p, Float | Int):
                config[p.name] = p.clip(config[p.name])
        return config

    return explore


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def points_to_evaluate(portfolio: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Portfolio configs as plain-Python dicts for ``TuneConfig``/``BasicVariantGenerator``."""
    return [{str(k): _plain(v) for k, v in c.items()} for c in portfolio]
