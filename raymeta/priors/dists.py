"""One hyperparameter's prior: numeric (truncated normal + uniform on the unit coordinate) or
categorical (explicit probabilities). ``prior.py`` combines them into a ``Prior``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from raymeta.errors import ConfigError
from raymeta.priors.space import Categorical, Param

MIN_STD = 0.01
_TINY = 1e-12


def trunc_normal_unit(mean: float, std: float, b: float) -> float:
    """The value in [0, 1] of a normal(``mean``, ``std``) truncated to [0, 1] at quantile ``b``
    (inverse CDF: one uniform per draw, so sampling stays reproducible)."""
    nd = NormalDist(mean, std)
    c0, c1 = nd.cdf(0.0), nd.cdf(1.0)
    p = min(max(c0 + b * (c1 - c0), _TINY), 1.0 - _TINY)
    return float(min(max(nd.inv_cdf(p), 0.0), 1.0))


def trunc_normal_pdf(mean: float, std: float, u: float) -> float:
    """Density at ``u`` of a normal(``mean``, ``std``) truncated to [0, 1]."""
    nd = NormalDist(mean, std)
    mass = nd.cdf(1.0) - nd.cdf(0.0)
    return nd.pdf(u) / mass if mass > 0 else 0.0


def index_from_uniform(probs: tuple[float, ...], a: float) -> int:
    """The index drawn with probabilities ``probs`` at uniform ``a``."""
    cum = np.cumsum(probs)
    return int(min(np.searchsorted(cum, a * cum[-1], side="right"), len(probs) - 1))


@dataclass(frozen=True)
class NumericDist:
    """``weight`` of a truncated normal (``mean``, ``std`` on the unit coordinate) + uniform rest."""

    weight: float = 0.0
    mean: float = 0.5
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (
            0.0 <= self.weight <= 1.0
            and 0.0 <= self.mean <= 1.0
            and self.std >= MIN_STD
            and math.isfinite(self.std)
        ):
            raise ConfigError(
                f"numeric prior needs weight, mean in [0, 1] and std >= {MIN_STD}, got {self.to_dict()}"
            )

    def unit_from_uniforms(self, a: float, b: float) -> float:
        if a >= self.weight:
            return float(b)
        return trunc_normal_unit(self.mean, self.std, b)

    def log_density(self, u: float) -> float:
        if not (0.0 <= u <= 1.0):
            return -math.inf
        dens = (1.0 - self.weight) + (
            self.weight * trunc_normal_pdf(self.mean, self.std, u) if self.weight > 0 else 0.0
        )
        return math.log(dens) if dens > 0 else -math.inf

    def spread(self) -> float:
        """A rough standard deviation on the unit coordinate (used to size PBT perturbations)."""
        return self.weight * min(self.std, 0.29) + (1.0 - self.weight) * 0.29

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class CategoricalDist:
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        total = sum(self.probs)
        if (
            not self.probs
            or any(not (p >= 0) for p in self.probs)
            or not math.isclose(total, 1.0, abs_tol=1e-6)
        ):
            raise ConfigError(
                f"categorical prior needs non-negative probabilities summing to 1, got {list(self.probs)}"
            )

    def index_from_uniform(self, a: float) -> int:
        return index_from_uniform(self.probs, a)

    def to_dict(self) -> dict[str, Any]:
        return {"probs": list(self.probs)}


Dist = NumericDist | CategoricalDist


def dist_from_dict(p: Param, d: Mapping[str, Any]) -> Dist:
    try:
        if isinstance(p, Categorical):
            probs = tuple(float(x) for x in d["probs"])
            if len(probs) != len(p.choices):
                raise ConfigError(
                    f"prior for {p.name!r} has {len(probs)} probabilities for {len(p.choices)} choices"
                )
            return CategoricalDist(probs)
        return NumericDist(float(d["weight"]), float(d["mean"]), float(d["std"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"prior for {p.name!r} is malformed ({exc})") from None


def broad_dist(p: Param) -> Dist:
    if isinstance(p, Categorical):
        return CategoricalDist(tuple(1.0 / len(p.choices) for _ in p.choices))
    return NumericDist()
