"""Benchmark task families that raymeta's defaults were NOT developed on (issue 15, item 5).

raymeta's defaults (learning rates, search spaces, priors) were tuned on the MAML ``sinusoid``
family (``y = A sin(x - phase)``, noise-free, ``x ~ U[-5, 5]``). A benchmark that only runs on
that family cannot tell a good default from one over-fitted to it, so this module holds
families of another functional form and noise model. Benchmarks put ``tests/benchmarks`` on
``sys.path`` and name a family by its import path, e.g. ``bench_families:Bumps``; nothing here
imports Ray.

``Bumps``: each task is a line plus two Gaussian bumps,

    f(x) = a x + b + sum_{j=1,2} h_j exp(-(x - c_j)^2 / (2 w_j^2)),

with ``a ~ U[-0.5, 0.5]`` (on a split-coded grid, see below), ``b ~ U[-1, 1]``, centres
``c_j ~ U[-4, 4]``, widths ``w_j ~ U[0.3, 1.5]``, signed heights ``h_j ~ U[-2, 2]`` and inputs
``x ~ U[-4, 4]``. Observed targets carry heteroscedastic Gaussian noise,
``y = f(x) + sigma(x) eps`` with ``sigma(x) = noise * (1 + |x| / 4)`` (``noise`` is the family
option, default 0.1: the noise doubles from the centre to the edges of the input range).

Where the noise goes:

* a fixed task's ``train`` and ``val`` parts are noisy (what a tuner fits and selects on is
  real, noisy data), its ``test`` part is noise-free: the test loss is then the error of the
  fitted function against the true one, with no irreducible noise floor adding a constant and
  variance to every tuner's score, so two tuners' test losses differ only by what they learned;
* sampled episodes (meta-training and meta-validation) are noisy in both support and query,
  the same noise model the fine-tuning train/val splits have.

The noise is drawn as standard normals whatever ``noise`` is and then scaled, so families that
differ only in ``noise`` share their tasks' parameters and inputs.

Meta-splits are provably disjoint, as in ``sinusoid``: the slope ``a`` lies on a grid of
``3 * 2**20`` cells whose index modulo 3 encodes the split (train 0, val 1, test 2), so no
train / val / test tasks (sampled or fixed) ever share a function; fixed tasks are seeded from
``(split, index)`` with a split-dependent seed as well.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from raymeta.checks import check_fits
from raymeta.errors import ConfigError
from raymeta.tasks.base import (
    Split,
    Task,
    TaskBatch,
    TaskFamily,
    check_positive_ints,
    check_split,
    check_task_index,
)

__all__ = ["Bumps", "bumps_seed"]

_GRID = 2**20
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_SALT = 0xB0B5_5EED
N_BUMPS = 2
SLOPE_RANGE = (-0.5, 0.5)
OFFSET_RANGE = (-1.0, 1.0)
CENTRE_RANGE = (-4.0, 4.0)
WIDTH_RANGE = (0.3, 1.5)
HEIGHT_RANGE = (-2.0, 2.0)
X_RANGE = (-4.0, 4.0)
MAX_NOISE = 100.0


def bumps_seed(split: str, index: int) -> int:
    """A deterministic 62-bit seed for the ``index``-th fixed ``Bumps`` task of ``split``."""
    h = (index * 0x9E3779B97F4A7C15 + _SPLIT_CODE[split] * 0xBF58476D1CE4E5B9 + _SALT) & (2**62 - 1)
    return h ^ (h >> 29)


def _uniform(lo: float, hi: float, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


class Bumps(TaskFamily):
    """A line plus two Gaussian bumps with heteroscedastic noise (see the module docstring)."""

    name = "bumps"
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        task_shots: int = 10,
        val_size: int = 10,
        test_size: int = 100,
        noise: float = 0.1,
    ):
        check_positive_ints(
            "bumps",
            shots=shots,
            queries=queries,
            task_shots=task_shots,
            val_size=val_size,
            test_size=test_size,
        )
        if (
            isinstance(noise, bool)
            or not isinstance(noise, (int, float))
            or not math.isfinite(noise)
            or not 0.0 <= noise <= MAX_NOISE
        ):
            raise ConfigError(f"bumps: noise must be a number in [0, {MAX_NOISE:g}], got {noise!r}")
        # a float64 x, noise and y of every example are drawn at once: refuse what cannot be drawn
        check_fits("bumps: one episode", (shots + queries) * 48.0, "lower shots / queries")
        check_fits(
            "bumps: one fixed task",
            (task_shots + val_size + test_size) * 48.0,
            "lower task_shots / val_size / test_size",
        )
        self.shots, self.queries = int(shots), int(queries)
        self.task_shots, self.val_size, self.test_size = (
            int(task_shots),
            int(val_size),
            int(test_size),
        )
        self.noise = float(noise)

    def options(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "queries": self.queries,
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "noise": self.noise,
        }

    # ----------------------------------------------------------------- task parameters
    @staticmethod
    def params(split: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """``n`` tasks' parameters of ``split``: ``slope`` / ``offset`` ``(n,)``, ``centre`` /
        ``width`` / ``height`` ``(n, 2)``, all float64."""
        k = torch.randint(0, _GRID, (n,), generator=g, dtype=torch.int64)
        cell = 3 * k + _SPLIT_CODE[split]
        lo, hi = SLOPE_RANGE
        slope = lo + (hi - lo) * (cell.double() + 0.5) / (3 * _GRID)
        return {
            "slope": slope,
            "offset": _uniform(*OFFSET_RANGE, (n,), g),
            "centre": _uniform(*CENTRE_RANGE, (n, N_BUMPS), g),
            "width": _uniform(*WIDTH_RANGE, (n, N_BUMPS), g),
            "height": _uniform(*HEIGHT_RANGE, (n, N_BUMPS), g),
        }

    @staticmethod
    def split_of_slope(slope: torch.Tensor) -> torch.Tensor:
        """Inverse of the grid encoding: the split code (0 train, 1 val, 2 test) of each slope
        (used by tests to prove disjointness)."""
        lo, hi = SLOPE_RANGE
        cell = torch.floor((slope.double() - lo) / (hi - lo) * (3 * _GRID)).long()
        return cell % 3

    def task_params(self, split: Split, index: int) -> dict[str, torch.Tensor]:
        """The parameters of the fixed task ``task(split, index)`` (each with a leading 1)."""
        check_split(split)
        check_task_index("bumps", index)
        return self.params(split, 1, torch.Generator().manual_seed(bumps_seed(split, index)))

    @staticmethod
    def function(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise-free targets ``(n, S, 1)`` of inputs ``x`` ``(n, S, 1)`` for parameters ``p``."""
        a, b = p["slope"].view(-1, 1, 1), p["offset"].view(-1, 1, 1)
        c, w, h = (p[k].unsqueeze(1) for k in ("centre", "width", "height"))  # (n, 1, bumps)
        bumps = (h * torch.exp(-((x - c) ** 2) / (2 * w**2))).sum(-1, keepdim=True)
        return a * x + b + bumps

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """The noise standard deviation at ``x``: ``noise * (1 + |x| / 4)``."""
        return self.noise * (1 + x.abs() / 4)

    # ----------------------------------------------------------------- drawing
    def _x(self, n: int, size: int, g: torch.Generator) -> torch.Tensor:
        return _uniform(*X_RANGE, (n, size, 1), g)

    def _noisy(
        self, n: int, size: int, p: dict[str, torch.Tensor], g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and noisy targets; the standard normals are drawn whatever ``noise`` is."""
        x = self._x(n, size, g)
        eps = torch.randn(n, size, 1, generator=g, dtype=torch.float64)
        return x, self.function(x, p) + self.sigma(x) * eps

    def episode_examples(self) -> int:
        return self.shots + self.queries

    def sample(self, split: Split, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        check_split(split)
        p = self.params(split, n_tasks, generator)
        xs, ys = self._noisy(n_tasks, self.shots, p, generator)
        xq, yq = self._noisy(n_tasks, self.queries, p, generator)
        return TaskBatch(xs.float(), ys.float(), xq.float(), yq.float())

    def task(self, split: Split, index: int) -> Task:
        check_split(split)
        check_task_index("bumps", index)
        g = torch.Generator().manual_seed(bumps_seed(split, index))
        p = self.params(split, 1, g)
        xt, yt = self._noisy(1, self.task_shots, p, g)
        xv, yv = self._noisy(1, self.val_size, p, g)
        xe = self._x(1, self.test_size, g)
        ye = self.function(xe, p)  # noise-free: the test loss is the error to the true function
        return Task(
            task_id=f"bumps:{split}:{index}",
            x_train=xt[0].float(),
            y_train=yt[0].float(),
            x_val=xv[0].float(),
            y_val=yv[0].float(),
            x_test=xe[0].float(),
            y_test=ye[0].float(),
            kind="regression",
            output_dim=1,
        )
