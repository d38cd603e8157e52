"""The task-family contract.

Lifecycle: a family is built from a ``FamilySpec`` (``make_family``), which validates its data
and options once. Meta-training then calls ``sample(split, n, generator)`` every step and gets a
fixed-shape ``TaskBatch`` (tasks are the leading batch dimension, ready for ``vmap``).
Fine-tuning and evaluation call ``task(split, index)`` for one fully specified ``Task`` with
train / val / test splits, deterministic in ``index``.

Splits are *meta*-splits: ``train`` tasks are for meta-training, ``val`` tasks for priors and
model selection, ``test`` tasks are held out for tuning benchmarks. They never share a task
(different classes for classification, disjoint task-id streams for regression).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from raymeta.errors import ConfigError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
Kind = Literal["regression", "classification"]


def check_positive_ints(family: str, **values: object) -> None:
    """One-line ``ConfigError`` unless every option is an integer >= 1 (bools are refused)."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{family}: {key} must be an integer >= 1, got {v!r}")


def check_task_index(family: str, index: object) -> int:
    """A fixed task's index: an integer in ``[0, 2**62)`` (task seeds are 62-bit)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**62:
        raise ConfigError(f"{family}: task index must be an integer in [0, 2**62), got {index!r}")
    return index


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (choose train, val or test)")
    return split  # type: ignore[return-value]


@dataclass(frozen=True)
class FamilySpec:
    """A family name plus its options (ways, shots, data path, ...), as stored in meta.json."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FamilySpec:
        return cls(name=str(d["name"]), options=dict(d.get("options", {})))


@dataclass
class TaskBatch:
    """A meta-batch: support ``(xs, ys)`` and query ``(xq, yq)``, task dimension first."""

    xs: torch.Tensor
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return int(self.xs.shape[0])

    def slice(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(
            self.xs[start:stop], self.ys[start:stop], self.xq[start:stop], self.yq[start:stop]
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TaskBatch:
        def cv(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return TaskBatch(cv(self.xs), cv(self.ys), cv(self.xq), cv(self.yq))

    @staticmethod
    def cat(batches: list[TaskBatch]) -> TaskBatch:
        return TaskBatch(
            torch.cat([b.xs for b in batches]),
            torch.cat([b.ys for b in batches]),
            torch.cat([b.xq for b in batches]),
            torch.cat([b.yq for b in batches]),
        )


@dataclass
class Task:
    """One task for fine-tuning: the tuner trains on ``train``, selects on ``val`` and reports
    ``test`` once at the end. ``notes`` records anything the user should know (e.g. a carved
    validation split)."""

    task_id: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    kind: Kind
    output_dim: int
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


class TaskFamily(ABC):
    """A distribution over related tasks with fixed input/output shapes."""

    name: str
    kind: Kind
    input_shape: tuple[int, ...]
    output_dim: int

    @abstractmethod
    def sample(self, split: Split, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Draw ``n_tasks`` episodes from ``split`` using only ``generator`` for randomness."""

    @abstractmethod
    def task(self, split: Split, index: int) -> Task:
        """The ``index``-th fixed task of ``split`` (deterministic, for tuning and benchmarks)."""

    def spec(self) -> FamilySpec:
        return FamilySpec(self.name, self.options())

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """JSON-able options that rebuild this family through ``make_family``."""

    def default_model(self) -> str:
        return "mlp" if len(self.input_shape) == 1 else "conv4"

    def global_classes(self, split: Split) -> int | None:
        """The number of *global* classes of meta-split ``split``, or None: not available (the
        default, and the answer of every regression family).

        Why it exists: the few-shot literature's strongest simple baseline ("A Closer Look at
        Few-shot Classification", Chen et al. 2019; "Rethinking Few-Shot Image Classification",
        Tian et al. 2020) pretrains one C-way classifier over *all* meta-train classes with
        their global labels, then fits a fresh N-way head per task. Episodes cannot express it:
        they relabel their classes 0..N-1 at random, so a shared head learns nothing from them.
        ``algo=pretrain`` (``raymeta.core.pretrain``) uses global labels when the family
        offers them and falls back to episodic multi-task pretraining when it does not.

        A family that answers an integer C must also implement ``sample_labelled``, whose labels
        are ``0..C-1``; the classes of two meta-splits are never the same class. The image
        families (``EpisodicFamily``: digits, omniglot) implement both; a rotated copy of a class
        is its own class, as in their episodes. Parquet classification families do not: a
        stored task's labels are ids *within that task* (class 3 of one task need not be class
        3 of another), so there is no class identity across tasks to trust and they keep the
        episodic fallback."""
        return None

    def sample_labelled(
        self, split: Split, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples ``x [n, *input_shape]`` of meta-split ``split`` with their global labels
        ``y [n]`` (int64 in ``0..global_classes(split)-1``), using only ``generator`` for
        randomness. Only for families whose ``global_classes`` is not None; the default is a
        one-line ``ConfigError`` saying global labels are not available."""
        raise ConfigError(f"{self.name}: global class labels are not available for this family")

    def episode_examples(self) -> int:
        """Support plus query examples of one sampled episode (sizes memory before a run).

        The default draws one training episode; families whose episodes could be too large to
        draw even once override it with the number computed from their options."""
        b = self.sample("train", 1, torch.Generator().manual_seed(0))
        return int(b.xs.shape[1]) + int(b.xq.shape[1])
