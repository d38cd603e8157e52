"""The MAML sinusoid family: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5].

Meta-splits are made provably disjoint by putting amplitudes on a fine grid whose index modulo
3 encodes the split (train 0, val 1, test 2): a grid of 3 * 2**20 points is uniform for every
practical purpose and no two splits can ever share a task.
"""

from __future__ import annotations

from typing import Any

import torch

from raymeta.checks import check_fits
from raymeta.tasks.base import (
    Split,
    Task,
    TaskBatch,
    TaskFamily,
    check_positive_ints,
    check_split,
    check_task_index,
)

_GRID = 2**20
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
AMP_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, torch.pi)
X_RANGE = (-5.0, 5.0)


def task_seed(split: str, index: int, salt: int = 0) -> int:
    """A deterministic 62-bit seed for the ``index``-th fixed task of ``split``."""
    h = (index * 0x9E3779B97F4A7C15 + _SPLIT_CODE[split] * 0xBF58476D1CE4E5B9 + salt) & (2**62 - 1)
    return h ^ (h >> 29)


class Sinusoid(TaskFamily):
    name = "sinusoid"
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        task_shots: int = 5,
        val_size: int = 10,
        test_size: int = 100,
    ):
        check_positive_ints(
            "sinusoid",
            shots=shots,
            queries=queries,
            task_shots=task_shots,
            val_size=val_size,
            test_size=test_size,
        )
        # a float64 x and y of every example are drawn at once: refuse what cannot be drawn
        check_fits("sinusoid: one episode", (shots + queries) * 32.0, "lower shots / queries")
        check_fits(
            "sinusoid: one fixed task",
            (task_shots + val_size + test_size) * 32.0,
            "lower task_shots / val_size / test_size",
        )
        self.shots, self.queries = int(shots), int(queries)
        self.task_shots, self.val_size, self.test_size = (
            int(task_shots),
            int(val_size),
            int(test_size),
        )

    def options(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "queries": self.queries,
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
        }

    @staticmethod
    def amplitude(split: str, n: int, g: torch.Generator) -> torch.Tensor:
        k = torch.randint(0, _GRID, (n,), generator=g, dtype=torch.int64)
        cell = 3 * k + _SPLIT_CODE[split]
        lo, hi = AMP_RANGE
        return lo + (hi - lo) * (cell.double() + 0.5) / (3 * _GRID)

    @staticmethod
    def split_of_amplitude(amp: torch.Tensor) -> torch.Tensor:
        """Inverse of the grid encoding (used by tests to prove disjointness)."""
        lo, hi = AMP_RANGE
        cell = torch.floor((amp.double() - lo) / (hi - lo) * (3 * _GRID)).long()
        return cell % 3

    def _draw(
        self, split: str, n: int, sizes: list[int], g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        amp = self.amplitude(split, n, g)
        phase = torch.rand(n, generator=g, dtype=torch.float64) * PHASE_RANGE[1]
        lo, hi = X_RANGE
        xs = [lo + (hi - lo) * torch.rand(n, s, 1, generator=g, dtype=torch.float64) for s in sizes]
        return amp, phase, xs

    @staticmethod
    def _f(x: torch.Tensor, amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        return amp.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def episode_examples(self) -> int:
        return self.shots + self.queries

    def sample(self, split: Split, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        check_split(split)
        amp, phase, (xs, xq) = self._draw(split, n_tasks, [self.shots, self.queries], generator)
        ys, yq = self._f(xs, amp, phase), self._f(xq, amp, phase)
        return TaskBatch(xs.float(), ys.float(), xq.float(), yq.float())

    def task(self, split: Split, index: int) -> Task:
        check_split(split)
        check_task_index("sinusoid", index)
        g = torch.Generator().manual_seed(task_seed(split, index))
        amp, phase, (xt, xv, xe) = self._draw(
            split, 1, [self.task_shots, self.val_size, self.test_size], g
        )
        ys = [self._f(x, amp, phase)[0].float() for x in (xt, xv, xe)]
        return Task(
            task_id=f"sinusoid:{split}:{index}",
            x_train=xt[0].float(),
            y_train=ys[0],
            x_val=xv[0].float(),
            y_val=ys[1],
            x_test=xe[0].float(),
            y_test=ys[2],
            kind="regression",
            output_dim=1,
        )
