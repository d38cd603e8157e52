"""Stacked vs vmapped population step (issue 17, BENCHMARKS.md "Issue 17, fifth pass"): the
same members trained by ``PopulationTrainer(model, kind)`` (on the CPU, built-in MLP / Conv4
members run as one stacked net) and by ``PopulationTrainer(model, kind, fold=False)`` (vmap over
``functional_call``, what every other model runs), in one process, interleaved, best of 3
rounds of 10 steps, per-member data, one thread. Prints member-steps/s of each and the ratio.
Usage: python benchmarks/population_stacked.py
"""

from __future__ import annotations

import time
from typing import Any

import torch

from raymeta.core.models import ModelSpec, build_model
from raymeta.finetune.step import MemberHParams, PopulationState, PopulationTrainer

SGD: list[dict[str, Any]] = [{"lr": 0.01}]
MIXED: list[dict[str, Any]] = [
    {"lr": 0.01},
    {"lr": 0.001, "optimizer": "adam"},
    {"lr": 0.01, "adapt": "head"},
    {"lr": 0.01, "batch_size": 3},
]
CASES = [  # label, spec, kind, train examples per member, member counts
    ("sinusoid MLP 40x40", ModelSpec("mlp", (1,), 1, {}), "regression", 10, (16, 256)),
    ("Conv4 5w1s 28x28", ModelSpec("conv4", (1, 28, 28), 5, {}), "classification", 5, (16, 64)),
]


def rates(
    spec: ModelSpec, kind: str, n: int, n_train: int, configs: list[dict[str, Any]], steps: int = 10
) -> dict[str, float]:
    """Member-steps/s of ``n`` members (``configs`` cycled) under both trainers."""
    torch.manual_seed(0)
    model = build_model(spec)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(n, n_train, *spec.input_shape)
    if kind == "classification":
        y = torch.randint(0, spec.output_dim, (n, n_train))
    else:
        y = torch.randn(n, n_train, spec.output_dim)
    hp = MemberHParams.from_configs(
        [configs[i % len(configs)] for i in range(n)], list(range(n)), n_train
    )
    state = PopulationState.from_params(init, n)
    trainers = {
        "stacked": PopulationTrainer(model, kind),
        "vmap": PopulationTrainer(model, kind, fold=False),
    }
    for t in trainers.values():  # warm-up
        t.train(state, hp, x, y, 1, per_member_data=True)
    best = dict.fromkeys(trainers, float("inf"))
    for _ in range(3):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            t.train(state, hp, x, y, steps, per_member_data=True)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {k: n * steps / v for k, v in best.items()}


def main() -> None:
    torch.set_num_threads(1)
    for label, spec, kind, n_train, sizes in CASES:
        for n in sizes:
            for name, configs in (("sgd", SGD), ("mixed", MIXED)):
                r = rates(spec, kind, n, n_train, configs)
                print(
                    f"{label:20s} {n:4d} members {name:5s}: stacked {r['stacked']:9,.0f}  "
                    f"vmap {r['vmap']:9,.0f} member-steps/s  -> {r['stacked'] / r['vmap']:.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
