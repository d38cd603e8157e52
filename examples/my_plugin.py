"""A user's own model and task family, in a plain module outside the raymeta package.

raymeta names them by import path (``my_plugin:ResidualMLP``, ``my_plugin:Ramps``) and stores
that path in the meta-checkpoint, so every Ray Train worker, Tune trial and sweep task imports
this module and rebuilds them. Nothing here imports Ray.

* ``ResidualMLP``: a small residual MLP. raymeta's model contract: called as
  ``factory(input_shape, output_dim, **options)``; the last layer is named ``head`` (ANIL and
  head-only fine-tuning adapt ``head.*``); no BatchNorm running statistics, and no LayerNorm /
  BatchNorm at all for second-order MAML (their second-order gradients are wrong under
  ``torch.func.vmap``; GroupNorm is exact); options are JSON-able.
* ``Ramps``: a regression family unlike the sinusoid: ``y = a * tanh(b * (x - c)) + d * x``,
  a smooth ramp whose height, steepness, centre and slope vary per task. Meta-splits are
  disjoint because the slope ``d`` lies on a grid whose index modulo 3 encodes the split.

Check both with ``raymeta.testing.check_model(ResidualMLP, (1,), 1)`` and
``raymeta.testing.check_task_family(Ramps())``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raymeta.tasks import Task, TaskBatch, TaskFamily

_SPLITS = {"train": 0, "val": 1, "test": 2}
_GRID = 2**20


class ResidualMLP(nn.Module):
    """``width``-wide MLP with ``blocks`` residual blocks. ``GroupNorm(1, C)`` normalises like
    ``LayerNorm(C)`` but, unlike it, has exact second-order gradients under ``vmap``."""

    def __init__(
        self, input_shape: Sequence[int], output_dim: int, width: int = 32, blocks: int = 2
    ):
        super().__init__()
        if not isinstance(width, int) or width < 1 or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"width must be >= 1 and blocks >= 0, got {width}, {blocks}")
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        self.inp = nn.Sequential(nn.Flatten(start_dim=-len(input_shape)), nn.Linear(n_in, width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, width), nn.Linear(width, width), nn.Tanh())
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class Ramps(TaskFamily):
    """``y = a tanh(b (x - c)) + d x`` with ``x ~ U[-4, 4]``, ``a ~ U[0.5, 3]``,
    ``b ~ U[0.5, 4]``, ``c ~ U[-2, 2]``, ``d ~ U[-0.5, 0.5]`` (on a split-coded grid)."""

    name = "ramps"
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        task_shots: int = 8,
        val_size: int = 16,
        test_size: int = 64,
    ):
        for key, v in {
            "shots": shots,
            "queries": queries,
            "task_shots": task_shots,
            "val_size": val_size,
            "test_size": test_size,
        }.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
                raise ValueError(f"ramps: {key} must be an integer in 1..100000, got {v!r}")
        self.shots, self.queries = shots, queries
        self.task_shots, self.val_size, self.test_size = task_shots, val_size, test_size

    def options(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "queries": self.queries,
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
        }

    def _params(self, split: str, n: int, g: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, 3, generator=g, dtype=torch.float64)
        a, b, c = 0.5 + 2.5 * u[:, 0], 0.5 + 3.5 * u[:, 1], -2 + 4 * u[:, 2]
        k = torch.randint(0, _GRID, (n,), generator=g)
        d = -0.5 + (3 * k + _SPLITS[split] + 0.5).double() / (3 * _GRID)
        return torch.stack([a, b, c, d], 1)

    @staticmethod
    def _f(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        a, b, c, d = (p[:, i].view(-1, 1, 1) for i in range(4))
        return a * torch.tanh(b * (x - c)) + d * x

    def _x(self, n: int, size: int, g: torch.Generator) -> torch.Tensor:
        return -4 + 8 * torch.rand(n, size, 1, generator=g, dtype=torch.float64)

    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}")
        p = self._params(split, n_tasks, generator)
        xs, xq = self._x(n_tasks, self.shots, generator), self._x(n_tasks, self.queries, generator)
        return TaskBatch(xs.float(), self._f(xs, p).float(), xq.float(), self._f(xq, p).float())

    def task(self, split: Any, index: int) -> Task:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}")
        g = torch.Generator().manual_seed(1_000_003 * int(index) + 7919 * _SPLITS[split] + 17)
        p = self._params(split, 1, g)
        xt, xv, xe = (self._x(1, s, g) for s in (self.task_shots, self.val_size, self.test_size))
        y = [self._f(x, p)[0].float() for x in (xt, xv, xe)]
        return Task(
            task_id=f"ramps:{split}:{index}",
            x_train=xt[0].float(),
            y_train=y[0],
            x_val=xv[0].float(),
            y_val=y[1],
            x_test=xe[0].float(),
            y_test=y[2],
            kind="regression",
            output_dim=1,
        )

    def episode_examples(self) -> int:
        return self.shots + self.queries
