"""Population step throughput: member-steps/s of sinusoid MLP populations (mixed SGD/Adam
configs, shared task data, one thread), best of 5 repeats.

Runs on the code before issue 13 (``raymeta.core.population``) and after
(``raymeta.finetune.step``), whichever ``raymeta`` is on the path: see ``before_after.sh``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import torch

import raymeta
from raymeta.core.models import ModelSpec, build_model
from raymeta.tasks import make_family


def main() -> None:
    torch.set_num_threads(1)
    new = (Path(raymeta.__file__).parent / "finetune").is_dir()
    mod = importlib.import_module("raymeta.finetune.step" if new else "raymeta.core.population")
    task = make_family("sinusoid").task("test", 0)
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (1,), 1, {"widths": [40, 40]}))
    params = {k: v.detach() for k, v in model.named_parameters()}
    rng = np.random.default_rng(0)
    for n in (8, 64, 1024):
        cfgs = [
            {
                "lr": float(10 ** rng.uniform(-3, -1)),
                "optimizer": ("sgd", "adam")[i % 2],
                "batch_size": int(rng.integers(1, 11)),
            }
            for i in range(n)
        ]
        hp = mod.MemberHParams.from_configs(cfgs, list(range(n)), len(task.x_train))
        trainer = mod.PopulationTrainer(model, "regression")
        steps = 200 if n <= 64 else 50
        trainer.train(mod.PopulationState.from_params(params, n), hp, task.x_train, task.y_train, 5)
        best = float("inf")
        for _ in range(5):
            state = mod.PopulationState.from_params(params, n)
            t0 = time.perf_counter()
            trainer.train(state, hp, task.x_train, task.y_train, steps)
            best = min(best, time.perf_counter() - t0)
        print(f"{'new' if new else 'old'} members {n:5d}: {n * steps / best:10.0f} member-steps/s")


if __name__ == "__main__":
    main()
