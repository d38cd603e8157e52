"""A Parquet task family like issue 17's memory case: 784-feature 5-way 5-shot tasks.

Gaussian class centres in 784 dimensions, split class-disjointly into meta-train / meta-val /
meta-test classes (200 / 50 / 50); each task draws 5 of its split's classes, labelled 0..4,
with 5 train, 15 val and 15 test rows per class (noise 1.5). Written with raymeta's own
``write_tasks``, so ``--family parquet --family-option path=...`` reads it.

Usage: python benchmarks/make_image_family.py OUT.parquet [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from raymeta.tasks import Task
from raymeta.tasks.parquet import write_tasks

DIM, WAYS, SHOTS, VAL, TEST, NOISE = 784, 5, 5, 15, 15, 1.5
CLASSES = {"train": range(0, 200), "val": range(200, 250), "test": range(250, 300)}
TASKS = {"train": 400, "val": 64, "test": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the Parquet file to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(0, 1, (300, DIM)).astype(np.float32)
    tasks, splits = [], []
    for split, n in TASKS.items():
        for i in range(n):
            classes = rng.choice(list(CLASSES[split]), WAYS, replace=False)
            parts: list[torch.Tensor] = []
            for rows in (SHOTS, VAL, TEST):
                x = np.concatenate(
                    [centres[c] + NOISE * rng.normal(0, 1, (rows, DIM)) for c in classes]
                )
                parts += [
                    torch.tensor(x, dtype=torch.float32),
                    torch.arange(WAYS).repeat_interleave(rows),
                ]
            tasks.append(Task(f"{split}-{i:04d}", *parts, kind="classification", output_dim=WAYS))
            splits.append(split)
    write_tasks(args.out, tasks, splits)
    print(f"wrote {args.out}: {len(tasks)} tasks")


if __name__ == "__main__":
    main()
