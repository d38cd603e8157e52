"""The evaluation table priors are fitted on: val-loss curves of configs on meta-val tasks.

``curves[t, c, s]`` is the val loss of config ``c`` on task ``t`` after ``steps[s]`` steps (NaN
where a run diverged); ``raymeta.finetune.evaluate`` fills it. Two objectives score a config
(``EvalTable.score``):

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

from dataclasses import dataclass

import numpy as np

from raymeta.errors import ConfigError

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
