"""N-way K-shot classification on the UCI 8x8 handwritten digits (1797 images, 10 digits).

Inputs are ``(1, 8, 8)`` floats in [0, 1] (pixel / 16). With ``rotations`` (the default) each
digit rotated by 0/90/180/270 degrees is its own class, 40 classes split 24 / 8 / 8 into
meta-train / meta-val / meta-test by the fixed table ``ROTATED_SPLIT`` below. The table is a
random split constrained so that look-alike classes never share a meta-split (so never share an
episode): 0, 1 and 8 turned by 180 degrees look like themselves, 6 turned by 180 looks like 9.
Without rotations the 10 digits split 4 / 3 / 3 (``PLAIN_SPLIT``), so val/test allow <= 3 ways.

A fixed task's val split holds ``val_size`` = 50 examples per class, as many as its test split:
``raymeta tune`` picks its final model on it among every member's reports, and with 10 per class
(the earlier default) that pick over-fitted: near-zero val loss, test loss above the scratch
baseline's on several held-out tasks (BENCHMARKS.md, "Time to quality"). Checkpoints record the
options they were trained with, so older ones keep their sizes (``raymeta tune --task-option``).

The data ships inside raymeta (``raymeta/tasks/data/digits.csv.gz``, the file scikit-learn
bundles; source and license in ``data/README.md``): nothing is downloaded, and neither
scikit-learn nor scipy is needed at run time.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from raymeta.errors import DataError
from raymeta.tasks._episodic import ClassPool, EpisodicFamily

# (digit, quarter turns) per meta-split; tests check it covers the 40 classes exactly once.
ROTATED_SPLIT: dict[str, tuple[tuple[int, int], ...]] = {
    "train": (
        (0, 0), (0, 1), (1, 1), (2, 1), (2, 3), (3, 0), (3, 1), (3, 2), (3, 3), (4, 0), (4, 2), (5, 0),
        (5, 1), (5, 2), (5, 3), (6, 0), (7, 0), (7, 1), (7, 2), (8, 0), (8, 3), (9, 0), (9, 1), (9, 3),
    ),
    "val": ((0, 2), (0, 3), (1, 2), (4, 3), (6, 1), (6, 3), (7, 3), (8, 1)),
    "test": ((1, 0), (1, 3), (2, 0), (2, 2), (4, 1), (6, 2), (8, 2), (9, 2)),
}  # fmt: skip
PLAIN_SPLIT: dict[str, tuple[int, ...]] = {
    "train": (0, 1, 2, 3),
    "val": (4, 5, 6),
    "test": (7, 8, 9),
}
_SALT = 0x0D161757
DIGITS_FILE = "digits.csv.gz"  # in raymeta/tasks/data/, with its source and license


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images ``[N, 8, 8]`` (0..16) and targets, read with numpy from the packaged
    ``digits.csv.gz`` (57 kB): scikit-learn and scipy are ~200 MB to install for this file."""
    try:
        with resources.as_file(resources.files("raymeta.tasks") / "data" / DIGITS_FILE) as f:
            data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"digits: cannot read the packaged {DIGITS_FILE}: {exc}") from None
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


@lru_cache(maxsize=1)
def _digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``[10, M, 8, 8]`` float images in [0, 1], padded per digit, and the count of each digit."""
    raw, tgt = read_digits()
    images = torch.from_numpy(raw) / 16.0
    target = torch.from_numpy(tgt)
    counts = torch.bincount(target, minlength=10)
    out = torch.zeros(10, int(counts.max()), 8, 8)
    for d in range(10):
        rows = images[target == d]
        out[d, : rows.shape[0]] = rows
    return out, counts


class Digits(EpisodicFamily):
    name = "digits"
    kind = "classification"
    salt = _SALT
    input_shape = (1, 8, 8)

    def __init__(
        self,
        ways: int = 5,
        shots: int = 5,
        queries: int = 15,
        task_shots: int | None = None,
        val_size: int = 50,
        test_size: int = 50,
        rotations: bool = True,
    ):
        self._set_episode_options(ways, shots, queries, task_shots, val_size, test_size, rotations)
        self.output_dim = ways
        images, counts = _digit_images()
        self.pool = ClassPool(images, counts, rotations=self.rotations)
        self.classes = {s: self._split_classes(s) for s in ("train", "val", "test")}
        for s, cls in self.classes.items():
            self.pool.check("digits", s, cls, ways, shots + queries, "shots + queries")
            self.pool.check(
                "digits",
                s,
                cls,
                ways,
                self.task_shots + val_size + test_size,
                "task_shots + val_size + test_size",
            )

    def _split_classes(self, split: str) -> torch.Tensor:
        if self.rotations:
            return torch.tensor([d * 4 + r for d, r in ROTATED_SPLIT[split]], dtype=torch.int64)
        return torch.tensor(PLAIN_SPLIT[split], dtype=torch.int64)

    def options(self) -> dict[str, Any]:
        return {
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "rotations": self.rotations,
        }
