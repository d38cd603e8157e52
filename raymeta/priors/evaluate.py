"""Fine-tune every (task, config) pair from the meta-init as one vmapped population per model.

Members are ``tasks x configs`` with per-member data: member ``t * C + c`` trains config ``c`` on
task ``t``'s train split. Validation loss is recorded on a geometric grid of steps (the curves);
members stop at their own ``steps`` budget, so the last curve point is each config's result.
Chunking bounds memory without changing results (member randomness is counter-based).

Two objectives score a config (``EvalTable.score``):

* ``final``: its val loss after its own ``steps``, i.e. as one fine-tuning run of that length;
* ``anytime``: every config trains the whole grid (its ``steps`` is the horizon H) and scores
  the mean over steps 1..H of its best val loss so far (the area under its best-so-far curve;
  a grid point's value holds until the next one). That is how a member of a population run is
  judged: it trains the run's whole budget, keeps its best snapshot, and the run is measured
  on how soon it gets good as well as how good it gets. (An unweighted mean over the log grid
  1, 2, 5, 10, ... was tried first: it put 3/7 of the weight on the first 5 steps and picked
  head-only configs that plateau there, on digits at twice the loss of a full fine-tune.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.models import build_model
from raymeta.core.population import MemberHParams, PopulationState, PopulationTrainer
from raymeta.core.train import derive_seed
from raymeta.errors import ConfigError
from raymeta.tasks import Task

OBJECTIVES = ("final", "anytime")


@dataclass
class EvalTable:
    """``curves[t, c, s]``: val loss of config ``c`` on task ``t`` after ``steps[s]`` steps."""

    curves: np.ndarray
    steps: list[int]
    init_loss: np.ndarray  # [tasks, configs]: the config's model at the meta-init (0 steps)
    objective: str = "final"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r} (use one of {OBJECTIVES})")

    @property
    def final(self) -> np.ndarray:
        return self.curves[:, :, -1]

    @property
    def score(self) -> np.ndarray:
        """[tasks, configs] loss each config is ranked by (see the module docstring)."""
        if self.objective == "final" or len(self.steps) < 2:
            return self.final
        after = self.curves[:, :, 1:]
        best = np.fmin.accumulate(np.where(np.isfinite(after), after, np.nan), axis=2)
        grid = np.asarray(self.steps[1:], dtype=np.float64)
        held = np.append(np.diff(grid), 1.0)  # steps each grid value holds, the last one 1
        out: np.ndarray = best @ (held / held.sum())  # NaN if a config never had a finite loss
        return out

    def concat(self, other: EvalTable) -> EvalTable:
        """Both tables' configs side by side (same tasks, step grid and objective)."""
        if (
            self.steps != other.steps
            or self.curves.shape[0] != other.curves.shape[0]
            or self.objective != other.objective
        ):
            raise ConfigError("evaluation tables differ in tasks, step grid or objective")
        return EvalTable(
            np.concatenate([self.curves, other.curves], axis=1),
            list(self.steps),
            np.concatenate([self.init_loss, other.init_loss], axis=1),
            self.objective,
        )


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


def _train_active(
    trainer: PopulationTrainer,
    state: PopulationState,
    hp: MemberHParams,
    x: torch.Tensor,
    y: torch.Tensor,
    start: int,
    stop: int,
) -> PopulationState:
    """Train from step ``start`` to ``stop`` only the members whose budget is not yet spent.

    Finished members would stay put anyway; skipping them makes the cost the sum of the budgets
    rather than members x the largest budget (about 4.6x less for log-uniform steps in [1, 100]).
    """
    active = torch.nonzero(hp.max_steps > start).flatten()
    if active.numel() == state.n_members:
        return trainer.train(state, hp, x, y, stop - start, per_member_data=True)
    if active.numel() == 0:
        return state
    sub = trainer.train(
        state.index(active),
        hp.index(active),
        x[active],
        y[active],
        stop - start,
        per_member_data=True,
    )
    for whole, part in ((state.params, sub.params), (state.m, sub.m), (state.v, sub.v)):
        for k in whole:
            whole[k][active] = part[k]
    state.step[active] = sub.step
    return state


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
    several rounds line up; ``first_index`` numbers the configs for their minibatch seeds, so a
    later round's configs never reuse an earlier round's randomness. With ``objective=
    "anytime"`` every config trains to the grid's end whatever its ``steps``. ``device="cuda"``
    trains the populations on the GPU (member randomness is device-independent, so the curves
    match the CPU's up to float rounding).
    """
    if not tasks or not configs:
        raise ConfigError("need at least one task and one config to evaluate")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r} (use one of {OBJECTIVES})")
    dev = eval_device(device)
    xt, yt, xv, yv = (t.to(dev) for t in _stack(tasks))
    n_t, n_c, n_train = len(tasks), len(configs), int(xt.shape[1])
    max_steps = max(int(c.get("steps", 1)) for c in configs)
    grid = curve_steps(max(max_steps, grid_max or 0))
    if objective == "anytime":
        configs = [{**c, "steps": grid[-1]} for c in configs]
    curves = np.full((n_t, n_c, len(grid)), np.nan)
    by_model: dict[str, list[int]] = {}
    for j, c in enumerate(configs):
        by_model.setdefault(str(c.get("model", ckpt.candidate().name)), []).append(j)
    members = [(t, j) for idxs in by_model.values() for t in range(n_t) for j in idxs]
    done = 0
    for name, idxs in by_model.items():
        cand = ckpt.candidate(name)
        init = {k: v.to(dev) for k, v in cand.params.items()}  # once per model, not per chunk
        trainer = PopulationTrainer(build_model(cand.spec), tasks[0].kind)
        pairs = [(t, j) for t in range(n_t) for j in idxs]
        for start in range(0, len(pairs), chunk_size):
            chunk = pairs[start : start + chunk_size]
            ti = torch.tensor([t for t, _ in chunk])
            seeds = [derive_seed(seed, t, first_index + j) for t, j in chunk]
            hp = MemberHParams.from_configs([configs[j] for _, j in chunk], seeds, n_train)
            state = PopulationState.from_params(init, len(chunk))
            prev = 0
            for s_i, s in enumerate(grid):
                if s > prev:
                    state = _train_active(trainer, state, hp, xt[ti], yt[ti], prev, s)
                    prev = s
                loss = trainer.evaluate(state.params, xv[ti], yv[ti], per_member_data=True)["loss"]
                for (t, j), v in zip(chunk, loss.tolist(), strict=True):
                    curves[t, j, s_i] = v
            done += len(chunk)
            if progress is not None:
                progress(done, len(members))
    return EvalTable(curves, grid, curves[:, :, 0].copy(), objective)
