"""A population's validation curves, the one result type of a fine-tuning run, and its rows.

``Curves`` collects the ``Evaluation``s of ``population.run_schedule``: per evaluation, every
member's val loss (and accuracy), the steps each member slot trained itself, the population's
member-steps so far and the wall time. Priors fitting reads it as a table of losses
(``evaluate.py``), a sweep writes it as result rows, and a Tune trial reports its last
evaluation. The result rows of every command are built here (``val_rows``, ``final_rows``), so a
row means the same thing wherever it was written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raymeta.finetune.hparams import row_hparams
from raymeta.finetune.population import Evaluation
from raymeta.results.schema import make_row

VAL_METRICS = ("val_loss", "val_accuracy")
# the columns of a row but ``sweep`` (a results part's, ``PART_SCHEMA``), in ``columns`` order
ROW_COLUMNS = ("strategy", "task", "seed", "trial", "step", "metric", "value", "hparams", "wall_s")


@dataclass
class Curves:
    """Per evaluation ``e`` and member ``i``: ``loss[e][i]`` (NaN kept), ``accuracy[e][i]``
    (classification), ``member_steps[e][i]`` (steps that member slot trained itself so far);
    per evaluation: ``step`` (the schedule's step), ``spent`` (the population's member-steps so
    far) and ``wall_s`` (seconds since the run started)."""

    step: list[int] = field(default_factory=list)
    spent: list[int] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    accuracy: list[list[float]] | None = None
    member_steps: list[list[int]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, ev: Evaluation) -> None:
        """Record one evaluation (and the exploit events that followed it)."""
        taken = [int(t) for t in ev.taken.tolist()]
        own = self.member_steps[-1] if self.member_steps else [0] * len(taken)
        self.member_steps.append([a + b for a, b in zip(own, taken, strict=True)])
        self.spent.append((self.spent[-1] if self.spent else 0) + sum(taken))
        self.step.append(int(ev.step))
        self.wall_s.append(time.perf_counter() - self.started)
        self.loss.append([float(v) for v in ev.loss.tolist()])
        if ev.accuracy is not None:
            self.accuracy = (self.accuracy or []) + [[float(v) for v in ev.accuracy.tolist()]]
        self.events += [{**e, "step": self.spent[-1]} for e in ev.events]

    @property
    def member_steps_total(self) -> int:
        return self.spent[-1] if self.spent else 0

    def table(self) -> np.ndarray:
        """``[evaluations, members]`` val losses (NaN kept)."""
        return np.asarray(self.loss, dtype=np.float64)

    def rows(self, common: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One row per (evaluation, member, metric): trial ``m<i>``, step = that member's own
        steps so far; a diverged member's val loss is inf."""
        out: list[dict[str, Any]] = []
        for e in range(len(self.loss)):
            for i, loss in enumerate(self.loss[e]):
                metrics = {"val_loss": loss}
                if self.accuracy is not None:
                    metrics["val_accuracy"] = self.accuracy[e][i]
                out += val_rows(
                    common, f"m{i}", self.member_steps[e][i], metrics, None, self.wall_s[e]
                )
        return out

    def columns(self, common: Mapping[str, Any]) -> dict[str, list[Any]]:
        """``rows(common)`` as columns of the results schema but ``sweep`` (the same rows in
        the same order): a sweep batch's ~8,000 rows without building a dict each
        (``raymeta.results.sink.KeyedRows.of_columns``). ``make_row`` converts and checks the
        values shared by every row, once per evaluation."""
        members = len(self.loss[0]) if self.loss else 0
        metrics = ["val_loss"] if self.accuracy is None else list(VAL_METRICS)
        per = len(metrics)  # rows per (evaluation, member)
        out: dict[str, list[Any]] = {c: [] for c in ROW_COLUMNS}
        for e, losses in enumerate(self.loss):
            first = make_row(
                **common,
                trial="m0",
                step=0,
                metric="val_loss",
                value=0.0,
                hparams=None,
                wall_s=self.wall_s[e],
            )
            k = members * per
            for c in ("strategy", "task", "seed", "wall_s"):
                out[c] += [first[c]] * k
            fin = [_finite(float(v)) for v in losses]
            if self.accuracy is None:
                out["value"] += fin
            else:
                acc = [float(v) for v in self.accuracy[e]]
                out["value"] += [v for pair in zip(fin, acc, strict=True) for v in pair]
            out["trial"] += [f"m{i}" for i in range(members) for _ in range(per)]
            out["step"] += [int(s) for s in self.member_steps[e] for _ in range(per)]
            out["metric"] += metrics * members
            out["hparams"] += [{}] * k
        return out


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def report_rows(
    common: Mapping[str, Any],
    trial: str,
    step: int,
    metrics: Mapping[str, float],
    hparams: Mapping[str, Any] | None,
    wall_s: float,
) -> list[dict[str, Any]]:
    """One result row per metric of one report (the vocabulary's keys of ``hparams``)."""
    hp = row_hparams(hparams)
    return [
        make_row(**common, trial=trial, step=step, metric=m, value=v, hparams=hp, wall_s=wall_s)
        for m, v in metrics.items()
    ]


def val_rows(
    common: Mapping[str, Any],
    trial: str,
    step: int,
    metrics: Mapping[str, float],
    hparams: Mapping[str, Any] | None,
    wall_s: float,
) -> list[dict[str, Any]]:
    """Rows of one validation report: ``val_loss`` (inf where it diverged) and, if present,
    ``val_accuracy``."""
    vals = {m: float(metrics[m]) for m in VAL_METRICS if m in metrics}
    if "val_loss" in vals:
        vals["val_loss"] = _finite(vals["val_loss"])
    return report_rows(common, trial, step, vals, hparams, wall_s)


def final_rows(
    common: Mapping[str, Any],
    trial: str,
    step: int,
    test: Mapping[str, float],
    config: Mapping[str, Any],
    wall_s: float,
) -> list[dict[str, Any]]:
    """Rows of the final test of the best snapshot (``test_loss``, ``test_accuracy``), with the
    config it was trained with."""
    return report_rows(common, trial, step, test, config, wall_s)
