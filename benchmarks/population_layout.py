"""Same-process A/B behind BENCHMARKS.md "Issue 17, tenth pass": a population's rows kept
grouped by member kind across ``train`` calls (``finetune.layout``, what raymeta does) against
gathering the members into group order and scattering them back on every call (what it did
before; here by making ``PopulationTrainer.group_keys`` report no order, so ``Population`` keeps
member order and the trainer gathers). One thread, process CPU time, rounds interleaved.

* ``sweep META [TASKS] [ROUNDS]``: the sweep batches of ``raymeta bench sweep`` (5 strategies x
  TASKS held-out tasks, 8 members a unit, 50 steps, evaluations every 5); the rows of both are
  compared (equal up to float32 rounding). META is a meta-checkpoint with priors, e.g. the one
  ``raymeta bench sweep --out DIR`` keeps in DIR/meta.
* ``images MODEL MEMBERS [ROUNDS]``: MEMBERS broad-prior members (mixed optimizers and adapts)
  of an MLP 784-64-64-5 (``mlp``) or a Conv4 of hidden 32 on 1x28x28 (``conv4``), 5-way, 25
  train and 75 val rows each (random), 50 steps, evaluations every 5.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import pyarrow.compute as pc
import torch

from raymeta.bench.sweep import sweep_config
from raymeta.core.models import ModelSpec
from raymeta.finetune import step
from raymeta.finetune.hparams import broad_space
from raymeta.finetune.population import Population, every, initial_state, run_schedule
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.priors.prior import broad_prior

LAYOUT = step.PopulationTrainer.group_keys
MODES: dict[str, Callable[..., torch.Tensor | None]] = {
    "gather each call": lambda self, hp, n_train: None,
    "rows kept grouped": LAYOUT,
}


def interleaved(rounds: int, work: Callable[[], object]) -> dict[str, list[float]]:
    """CPU seconds of ``work`` under each mode, rounds interleaved (the order flips each round)."""
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(rounds):
            for mode in list(MODES) if r % 2 == 0 else list(MODES)[::-1]:
                step.PopulationTrainer.group_keys = MODES[mode]  # type: ignore[method-assign]
                t = time.process_time()
                work()
                seconds[mode].append(time.process_time() - t)
                print(f"round {r + 1} {mode:18s} {seconds[mode][-1]:.2f} s CPU", flush=True)
    finally:
        step.PopulationTrainer.group_keys = LAYOUT  # type: ignore[method-assign]
    return seconds


def summary(seconds: dict[str, list[float]], work: float, unit: str) -> None:
    for mode, s in seconds.items():
        print(
            f"{mode:18s} best {min(s):.2f} s ({work / min(s):,.0f} {unit}/s), "
            f"all {' '.join(f'{x:.2f}' for x in s)}"
        )
    first, second = (min(s) for s in seconds.values())
    print(f"rows kept grouped: {first / second:.2f}x (best to best)")


def sweep(meta: str, tasks: int, rounds: int) -> None:
    cfg = sweep_config(meta, tasks)
    batches = plan_batches(cfg.units(), 1, 1000)
    run_batch(batches[0][:2], cfg)  # warm-up: imports, first calls
    values: dict[str, list[float]] = {}

    def work() -> None:
        tables = [run_batch(b, cfg).table for b in batches]
        mode = "rows kept grouped" if step.PopulationTrainer.group_keys is LAYOUT else "gather"
        values[mode] = [v for tb in tables for v in tb["value"].to_pylist()]
        losses = [tb.filter(pc.equal(tb["metric"], "test_loss")) for tb in tables]
        values["steps"] = [sum(pc.sum(tb["step"]).as_py() for tb in losses)]

    seconds = interleaved(rounds, work)
    summary(seconds, values["steps"][0], "member-steps")
    print(row_differences(values["gather"], values["rows kept grouped"]))


def row_differences(a: list[float], b: list[float]) -> str:
    """How many of two runs' result values differ, and by how much at most (relative)."""
    rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True) if x == x and y == y]
    return f"rows: {sum(r > 0 for r in rel)} of {len(a)} values differ, by at most {max(rel):.1e}"


def image_run(model: str, members: int, own_steps: bool = False) -> Callable[[], None]:
    """One population run of MEMBERS broad-prior members of ``model`` (``mlp``: 784-64-64-5,
    ``conv4``: hidden 32 on 1x28x28), 5-way, 25 train / 75 val random rows each, 50 steps,
    evaluations every 5; every member trains 50 steps, or with ``own_steps`` its config's."""
    shape: tuple[int, ...]
    if model == "conv4":
        spec, shape = ModelSpec("conv4", (1, 28, 28), 5, {"hidden": 32}), (1, 28, 28)
    else:
        spec, shape = ModelSpec("mlp", (784,), 5, {"widths": [64, 64]}), (784,)
    prior = broad_prior(broad_space([model], 25, 50))
    configs = [
        {**c, "model": model, **({} if own_steps else {"steps": 50})}
        for c in prior.sample(members, np.random.default_rng(0))
    ]
    g = torch.Generator().manual_seed(0)
    xt, xv = (torch.randn(members, k, *shape, generator=g) for k in (25, 75))
    yt, yv = (torch.randint(0, 5, (members, k), generator=g) for k in (25, 75))

    def work() -> None:
        state = initial_state(spec, None, list(range(members)))
        pop = Population(
            spec, "classification", model, configs, list(range(members)), state, horizon=50
        )
        for _ in run_schedule(pop, (xt, yt), (xv, yv), every(5, 50), per_member_data=True):
            pass

    return work


def images(model: str, members: int, rounds: int) -> None:
    work = image_run(model, members)
    work()  # warm-up
    summary(interleaved(rounds, work), members * 50, "member-steps")


def main() -> None:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "sweep":
        sweep(args[1], int(args[2]) if len(args) > 2 else 200, int(args[3]) if len(args) > 3 else 4)
    elif len(args) >= 3 and args[0] == "images" and args[1] in ("mlp", "conv4"):
        images(args[1], int(args[2]), int(args[3]) if len(args) > 3 else 2)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
