"""Synthetic sweep results with known structure, for tests and for trying ``raymeta report``
without running a sweep. Each strategy's members follow ``floor + (start - floor) * exp(-s/tau)``
with multiplicative noise, so which strategy should win is known in advance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raymeta.results.schema import make_row

# strategy: (start loss, floor, tau in member-steps per member, members, steps per member, s per step)
DEFAULT_STRATEGIES: Mapping[str, tuple[float, float, float, int, int, float]] = {
    "meta+prior+pbt": (0.8, 0.05, 30.0, 4, 100, 0.002),
    "meta+fixed-default": (0.8, 0.30, 5.0, 1, 10, 0.002),
    "scratch+broad+pbt": (4.0, 0.20, 60.0, 4, 100, 0.002),
    "scratch+broad+random": (4.0, 0.40, 80.0, 4, 100, 0.003),
}


def synthetic_rows(
    sweep: str = "synthetic",
    tasks: Sequence[str] = ("t0", "t1", "t2"),
    seeds: Sequence[int] = (0, 1, 2),
    strategies: Mapping[str, tuple[float, float, float, int, int, float]] = DEFAULT_STRATEGIES,
    interval: int = 10,
    rng_seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows following the schema conventions: val_loss per interval per member, one test_loss per run."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for ti, task in enumerate(tasks):
        scale = 1.0 + 0.5 * ti  # tasks differ in loss scale, so raw means are not comparable
        for seed in seeds:
            for strategy, (start, floor, tau, members, steps, sec) in strategies.items():
                best = np.inf
                for m in range(members):
                    lr = float(10 ** rng.uniform(-3, -1))
                    for step in range(interval, steps + 1, interval):
                        clean = floor + (start - floor) * np.exp(-step / tau)
                        val = scale * clean * float(np.exp(rng.normal(0, 0.1)))
                        best = min(best, val)
                        wall = (m * steps + step) * sec  # members run one after another
                        rows.append(
                            make_row(
                                sweep=sweep,
                                strategy=strategy,
                                task=task,
                                seed=seed,
                                trial=f"m{m}",
                                step=step,
                                metric="val_loss",
                                value=val,
                                hparams={"lr": lr},
                                wall_s=wall,
                            )
                        )
                test = best * float(np.exp(rng.normal(0, 0.05)))
                rows.append(
                    make_row(
                        sweep=sweep,
                        strategy=strategy,
                        task=task,
                        seed=seed,
                        trial="best",
                        step=members * steps,
                        metric="test_loss",
                        value=test,
                        hparams={},
                        wall_s=members * steps * sec,
                    )
                )
    return rows
