"""Fine-tune every (task, config) pair from the meta-init: the evaluation priors are fitted on.

Members are ``tasks x configs``, each on its own task's train split (per-member data), one
``Population`` per model candidate and chunk of members (chunking bounds memory without
changing results: member randomness is counter-based). Validation loss is recorded on a
geometric grid of steps (``curve_steps``), step 0 included; with the ``final`` objective a
member stops at its config's own ``steps``, with ``anytime`` every member trains the grid's end
(the run's horizon). The result is a ``priors.table.EvalTable`` (see there for the scores).

Seeding: member (task ``t``, config ``j``) draws minibatches with ``derive_seed(seed, t,
first_index + j)``, so a later round's configs (``first_index``) never reuse an earlier
round's randomness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.train import derive_seed
from raymeta.errors import ConfigError
from raymeta.finetune.population import Population, data_dtype, initial_state, run_schedule
from raymeta.priors.table import OBJECTIVES, EvalTable
from raymeta.tasks import Task


def curve_steps(max_steps: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, ... up to and including ``max_steps``."""
    out, base = [0], 1
    while base < max_steps:
        out += [s for s in (base, 2 * base, 5 * base) if s < max_steps]
        base *= 10
    return sorted(set(out + [max_steps]))


def eval_device(name: str) -> torch.device:
    """The device populations train on; CUDA on a machine without it is a one-line error."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use cpu or cuda[:N])") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r} (use cpu or cuda[:N])")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: torch.cuda is not available on this machine")
    return dev


def _stack(tasks: Sequence[Task]) -> tuple[torch.Tensor, ...]:
    shapes = {(t.x_train.shape, t.x_val.shape) for t in tasks}
    if len(shapes) != 1:
        raise ConfigError("all tasks of one population must share train/val shapes")
    return tuple(
        torch.stack([getattr(t, k) for t in tasks])
        for k in ("x_train", "y_train", "x_val", "y_val")
    )


def evaluate_configs(
    ckpt: MetaCheckpoint,
    tasks: Sequence[Task],
    configs: Sequence[Mapping[str, Any]],
    seed: int,
    chunk_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    grid_max: int | None = None,
    first_index: int = 0,
    objective: str = "final",
    device: str = "cpu",
) -> EvalTable:
    """Val-loss curves of every config on every task (see the module docstring).

    ``grid_max`` fixes the curve grid's last step (default: the largest ``steps``) so tables of
    several rounds line up. ``device="cuda"`` trains the populations on the GPU (member
    randomness is device-independent, so the curves match the CPU's up to float rounding).
    """
    if not tasks or not configs:
        raise ConfigError("need at least one task and one config to evaluate")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r} (use one of {OBJECTIVES})")
    dev = eval_device(device)
    xt, yt, xv, yv = (t.to(dev) for t in _stack(tasks))
    n_t, n_c = len(tasks), len(configs)
    max_steps = max(int(c.get("steps", 1)) for c in configs)
    grid = curve_steps(max(max_steps, grid_max or 0))
    horizon = grid[-1] if objective == "anytime" else None
    curves = np.full((n_t, n_c, len(grid)), np.nan)
    by_model: dict[str, list[int]] = {}
    for j, c in enumerate(configs):
        by_model.setdefault(str(c.get("model", ckpt.candidate().name)), []).append(j)
    total, done = n_t * n_c, 0
    for name, idxs in by_model.items():
        cand = ckpt.candidate(name)
        pairs = [(t, j) for t in range(n_t) for j in idxs]
        init = initial_state(cand.spec, cand.params, [0], data_dtype(xt)).to(dev)  # per model
        for start in range(0, len(pairs), chunk_size):
            chunk = pairs[start : start + chunk_size]
            ti = torch.tensor([t for t, _ in chunk])
            pop = Population(
                cand.spec,
                tasks[0].kind,
                name,
                [configs[j] for _, j in chunk],
                [derive_seed(seed, t, first_index + j) for t, j in chunk],
                init.index([0] * len(chunk)),
                horizon=horizon,
                keep_best=False,
            )
            data = (xt[ti], yt[ti]), (xv[ti], yv[ti])
            for s_i, ev in enumerate(run_schedule(pop, *data, grid, per_member_data=True)):
                for (t, j), v in zip(chunk, ev.loss.tolist(), strict=True):
                    curves[t, j, s_i] = v
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return EvalTable(curves, grid, curves[:, :, 0].copy(), objective)
