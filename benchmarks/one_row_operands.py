"""Same-process A/B behind BENCHMARKS.md "Issue 17, twelfth pass": the stacked net's
transposes as reshapes where a dimension is 1 (``core.conv_batched._swapped``, what raymeta
does) against plain transposes (before; switched back here in-process). A one-input or
one-output layer's transposed view has strides ``(n, 1, 1)``, which the CPU's batched matmul
takes as a transposed operand and, beside another transposed operand, runs ~8x slower.

* ``population [MEMBERS...] [--rounds R]``: ``raymeta bench population``'s measurement
  (``bench.population.run_size``: sinusoid MLP 1-40-40-1, SGD members, 20 steps a call, best
  of R interleaved rounds) with two trainers, ``before`` and ``after``, beside the bare
  ``vmap(grad)`` population, at each MEMBERS (default 64 1024 16384; R default 5);
  ``--config mixed``: raymeta's members as ``bench population --members-config mixed`` mixes
  them (SGD / Adam, minibatches, head-only), against the same bare SGD population.
* ``sweep META [TASKS] [ROUNDS]``: ``raymeta bench sweep``'s batches (sinusoid; before and
  after, rounds interleaved, best wall and CPU); the rows of both are compared.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from fused_adam_stops import sweep as sweep_modes  # the sibling script (benchmarks/)

import raymeta.core.conv_batched as cb
from raymeta.bench.population import run_size
from raymeta.finetune.step import PopulationTrainer

AFTER = cb._swapped


def _before(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


SWAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"before": _before, "after": AFTER}


def trainer(swap: Callable[[torch.Tensor], torch.Tensor]) -> type[PopulationTrainer]:
    """A ``PopulationTrainer`` whose ``train`` runs with ``swap`` as the stacked net's transpose."""

    class Switched(PopulationTrainer):
        def train(self, *a: Any, **k: Any) -> Any:
            cb._swapped = swap
            try:
                return super().train(*a, **k)
            finally:
                cb._swapped = AFTER

    return Switched


def population(sizes: list[int], rounds: int, config: str) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 20 steps, {config} members"
    )
    print(f"{'members':>8} {'impl':8s} {'member-steps/s':>15} {'/ bare':>7}")
    for n in sizes:
        trainers = {name: trainer(swap) for name, swap in SWAPS.items()}
        for r in run_size(n, 20, rounds, torch.device("cpu"), trainers, config):
            print(
                f"{r['members']:>8} {r['impl']:8s} {r['member_steps_per_s']:>15,.0f} "
                f"{r['ratio_to_bare']:>7.2f}",
                flush=True,
            )


def sweep(meta: str, tasks: int, rounds: int) -> None:
    """``fused_adam_stops.sweep`` (the sibling script) with the two transposes as its modes."""

    def put(swap: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        return lambda: setattr(cb, "_swapped", swap)

    sweep_modes(meta, tasks, rounds, {name: put(swap) for name, swap in SWAPS.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    pop = sub.add_parser("population")
    pop.add_argument("members", type=int, nargs="*", default=[64, 1024, 16384])
    pop.add_argument("--rounds", type=int, default=5)
    pop.add_argument("--config", choices=["sgd", "mixed"], default="sgd")
    sw = sub.add_parser("sweep")
    sw.add_argument("meta")
    sw.add_argument("tasks", type=int, nargs="?", default=200)
    sw.add_argument("rounds", type=int, nargs="?", default=2)
    a = p.parse_args()
    if a.mode == "population":
        population(a.members, a.rounds, a.config)
    else:
        sweep(a.meta, a.tasks, a.rounds)


if __name__ == "__main__":
    main()
