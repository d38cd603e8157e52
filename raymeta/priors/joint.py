"""The joint component of a learned prior: a kernel mixture over whole good configurations.

Why joint: good fine-tuning hyperparameters come in combinations (Adam + head-only + many steps,
or SGD + a larger rate + few steps); a per-parameter prior mixes halves of different good configs
into bad ones. Like TPE's Parzen estimator, the component is a mixture of kernels centred on
evaluated configurations: numeric parameters get a truncated normal of width ``bandwidth`` around
the centre's unit coordinate, categorical ones keep the centre's value with probability ``keep``
(otherwise they are drawn from the factorised prior's marginal).

Unlike TPE, the centre weights are not uniform over a top quantile: ``best_of_n_weights`` chooses
them to minimise the expected best-of-``n`` normalised regret on the meta-val table, exactly, for
``n`` i.i.d. draws. A population of ``n`` members is scored by its best member, so the weights
favour configs that are good on *different* tasks over near-copies of one config that is good on
average (measured on sinusoid: best-of-8 regret 0.17 against 0.22 for uniform weights on the
top 8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raymeta.errors import ConfigError
from raymeta.priors.dists import index_from_uniform, trunc_normal_pdf, trunc_normal_unit
from raymeta.priors.space import SearchSpace

MIN_WEIGHT = 0.005  # centres below this weight after optimisation are dropped (then renormalised)


@dataclass(frozen=True)
class Joint:
    """``weight`` x kernel mixture over ``centres`` (configs) + the rest for the factorised prior."""

    weight: float
    bandwidth: float
    keep: float
    centres: tuple[Mapping[str, Any], ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        ok = (
            0.0 <= self.weight <= 1.0
            and 0.0 < self.bandwidth <= 1.0
            and 0.0 <= self.keep <= 1.0
            and len(self.centres) == len(self.probs) >= 1
            and all(p >= 0 for p in self.probs)
            and math.isclose(sum(self.probs), 1.0, abs_tol=1e-6)
        )
        if not ok:
            raise ConfigError(
                "joint prior needs weight, keep in [0, 1], bandwidth in (0, 1] and one probability"
                f" per centre summing to 1, got weight={self.weight}, bandwidth={self.bandwidth},"
                f" keep={self.keep}, {len(self.centres)} centres, {len(self.probs)} probabilities"
            )

    def check(self, space: SearchSpace) -> Joint:
        """Every centre must be a config of ``space`` (restricted to it)."""
        return Joint(
            self.weight,
            self.bandwidth,
            self.keep,
            tuple(space.validate(c) for c in self.centres),
            self.probs,
        )

    def centre_index(self, a: float) -> int:
        return index_from_uniform(self.probs, a)

    def unit_from_uniform(self, centre_u: float, b: float) -> float:
        """Truncated normal on [0, 1] around ``centre_u`` by inverse CDF (one uniform)."""
        return trunc_normal_unit(centre_u, self.bandwidth, b)

    def log_kernel(self, centre_u: float, u: float) -> float:
        dens = trunc_normal_pdf(centre_u, self.bandwidth, u)
        return math.log(dens) if dens > 0 else -math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "bandwidth": self.bandwidth,
            "keep": self.keep,
            "centres": [dict(c) for c in self.centres],
            "probs": list(self.probs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Joint:
        try:
            return cls(
                float(d["weight"]),
                float(d["bandwidth"]),
                float(d["keep"]),
                tuple(dict(c) for c in d["centres"]),
                tuple(float(p) for p in d["probs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"joint prior is malformed ({exc})") from None


def expected_best_of_n(regret: np.ndarray, probs: np.ndarray, n: int) -> float:
    """E over tasks of the lowest regret among ``n`` i.i.d. configs drawn with ``probs``."""
    return float(_expected_best(torch.as_tensor(regret), torch.as_tensor(probs), n))


def _expected_best(regret: torch.Tensor, probs: torch.Tensor, n: int) -> torch.Tensor:
    # sort each task's configs by regret; P(best = i-th) = (1 - S_{i-1})^n - (1 - S_i)^n
    order = torch.argsort(regret, dim=1, stable=True)
    r = torch.gather(regret, 1, order)
    s = torch.cumsum(probs[order], dim=1).clamp(max=1.0)
    s_prev = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1)
    return (r * ((1.0 - s_prev) ** n - (1.0 - s) ** n)).sum(dim=1).mean()


def best_of_n_weights(regret: np.ndarray, n: int, iters: int = 300) -> np.ndarray:
    """Centre probabilities minimising ``expected_best_of_n`` on ``regret`` [tasks, configs].

    Softmax logits optimised with Adam from uniform (deterministic: no randomness involved).
    """
    if n < 1:
        raise ConfigError(f"joint prior: best-of-n needs n >= 1, got {n}")
    r = torch.as_tensor(np.asarray(regret, dtype=np.float64))
    z = torch.zeros(r.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(iters):
        loss = _expected_best(r, torch.softmax(z, dim=0), n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(z.detach(), dim=0).numpy()


def fit_joint(
    space: SearchSpace,
    configs: Sequence[Mapping[str, Any]],
    regret: np.ndarray,
    weight: float,
    bandwidth: float,
    keep: float,
    best_of: int,
) -> Joint:
    """Kernel mixture over the evaluated ``configs`` with best-of-``best_of`` optimal weights."""
    w = best_of_n_weights(regret, best_of)
    idx = [int(i) for i in np.nonzero(w >= MIN_WEIGHT)[0]] or [int(np.argmax(w))]
    p = w[idx] / w[idx].sum()
    names = space.names()
    centres = tuple({k: configs[i][k] for k in names} for i in idx)
    return Joint(weight, bandwidth, keep, centres, tuple(float(x) for x in p))
