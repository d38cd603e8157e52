"""Same-process A/B behind BENCHMARKS.md "Issue 17, eleventh pass": what raymeta does now
against the code before two changes, each switched off here in-process:

* the fused Adam update for Adam members in lockstep whose members stop mid-call
  (``finetune.lockstep``; before: any call in which an Adam member stopped ran the per-member
  update, eight passes over the weights and moments where the kernel makes one);
* the folded linear layers as ``(w @ h^T)^T`` (``core.conv_batched._linear``), whose weight
  gradients come out contiguous (before: ``h @ w^T``, transposed gradients, which the fused
  kernel, blind to strides, needed copied).

Modes: ``before`` (both off), ``lockstep`` (the first only), ``after`` (both). Rounds
interleaved (order flips each round), wall and process CPU time, best of each.

* ``priors META [TASKS] [CONFIGS] [ROUNDS]``: ``fit_priors`` with its defaults but TASKS x
  CONFIGS (default 8 x 32) and no strategy selection; the fitted portfolios are compared.
  META: e.g. the 784-feature 5-way checkpoint that ``benchmarks/cpu_targets.sh`` builds.
* ``images MEMBERS [ROUNDS]``: MEMBERS broad-prior members (mixed optimizers, adapts, steps) of
  an MLP 784-64-64-5, 5-way, 25 train / 75 val rows each, up to 50 steps, evaluations every 5
  (``population_layout.image_run`` with each config's own steps).
* ``sweep META [TASKS] [ROUNDS]``: ``raymeta bench sweep``'s batches (sinusoid); rows compared.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from population_layout import image_run, row_differences  # the sibling script (benchmarks/)

import raymeta
import raymeta.core.conv_batched as cb
from raymeta.bench.sweep import sweep_config
from raymeta.finetune.lockstep import Lockstep
from raymeta.finetune.step import PopulationTrainer
from raymeta.orchestration.sweep.batch import plan_batches, run_batch

NEW_LOCK, NEW_LINEAR = PopulationTrainer.__dict__["_lockstep"], cb._linear


def _old_lock(t: torch.Tensor, limit: torch.Tensor, n_steps: int, dev: torch.device) -> Any:
    lock = Lockstep.of(t, limit, n_steps) if dev.type == "cpu" else None
    return lock if lock is not None and not lock.at else None  # nobody stops in the call


def _old_linear(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.bmm(h, w.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)


MODES = {
    "before": (staticmethod(_old_lock), _old_linear),
    "lockstep": (NEW_LOCK, _old_linear),
    "after": (NEW_LOCK, NEW_LINEAR),
}


def _switch(mode: str) -> Callable[[], None]:
    def apply() -> None:
        PopulationTrainer._lockstep, cb._linear = MODES[mode]  # type: ignore[method-assign]

    return apply


SWITCHES = {mode: _switch(mode) for mode in MODES}


def interleaved(
    rounds: int,
    work: Callable[[str], object],
    switches: Mapping[str, Callable[[], None]] = SWITCHES,
) -> dict[str, list[tuple[float, float]]]:
    """Wall and CPU seconds of ``work(mode)`` under each of ``switches`` (mode -> what puts
    that mode in place; ``after`` is the code as it is, put back at the end), rounds
    interleaved (the order flips each round); prints each round and the best of each mode."""
    seconds: dict[str, list[tuple[float, float]]] = {m: [] for m in switches}
    try:
        for r in range(rounds):
            for mode in list(switches) if r % 2 == 0 else list(switches)[::-1]:
                switches[mode]()
                t, c = time.perf_counter(), time.process_time()
                work(mode)
                seconds[mode].append((time.perf_counter() - t, time.process_time() - c))
                w_, c_ = seconds[mode][-1]
                print(f"round {r + 1} {mode:8s} wall {w_:.2f} s, CPU {c_:.2f} s", flush=True)
    finally:
        switches["after"]()
    base = min(w for w, _ in seconds["before"])
    for mode, s in seconds.items():
        best = min(w for w, _ in s)
        print(
            f"{mode:8s} best wall {best:.2f} s, best CPU {min(c for _, c in s):.2f} s: "
            f"{base / best:.2f}x before"
        )
    return seconds


def priors(meta: str, tasks: int, configs: int, rounds: int) -> None:
    ckpt = raymeta.load_meta_checkpoint(meta)
    cfg = raymeta.PriorFitConfig(n_tasks=tasks, n_configs=configs, select_tasks=0)
    portfolios: dict[str, list[dict[str, Any]]] = {}

    def work(mode: str) -> None:
        portfolios[mode] = raymeta.fit_priors(ckpt, cfg).portfolio

    interleaved(rounds, work)
    same = all(p == portfolios["before"] for p in portfolios.values())
    print(f"portfolios equal across modes: {same}")


def images(members: int, rounds: int) -> None:
    work = image_run("mlp", members, own_steps=True)
    work()  # warm-up
    interleaved(rounds, lambda mode: work())


def sweep(
    meta: str, tasks: int, rounds: int, switches: Mapping[str, Callable[[], None]] = SWITCHES
) -> None:
    """``bench sweep``'s batches under each of ``switches`` (``interleaved``); the rows of
    ``before`` and ``after`` are compared."""
    cfg = sweep_config(meta, tasks)
    batches = plan_batches(cfg.units(), 1, 1000)
    run_batch(batches[0][:2], cfg)  # warm-up
    values: dict[str, list[float]] = {}

    def work(mode: str) -> None:
        values[mode] = [v for b in batches for v in run_batch(b, cfg).table["value"].to_pylist()]

    interleaved(rounds, work, switches)
    print(row_differences(values["before"], values["after"]))


def main() -> None:
    a = sys.argv[1:]
    n = [int(v) for v in a[2:]] if a and a[0] != "images" else [int(v) for v in a[1:]]
    if len(a) >= 2 and a[0] == "priors":
        priors(a[1], *(n + [8, 32, 2][len(n) :]))
    elif len(a) >= 2 and a[0] == "images":
        images(*(n + [400, 2][len(n) :]))
    elif len(a) >= 2 and a[0] == "sweep":
        sweep(a[1], *(n + [200, 2][len(n) :]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
