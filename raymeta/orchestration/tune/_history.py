"""A driver-side Tune callback that appends every trial report to a JSONL file in ``--out``.

Why not Tune's own ``result.json``: when a trial restarts (PBT exploit, pause/resume, retry)
Tune copies the last *synced* copy of that file over the local one, so reports get lost. Here
each report is one appended line (a kill can only truncate the last line, which the reader
skips), and a resumed driver keeps appending to the same file. Reports recomputed after a
resume are bit-identical (counter-based randomness from the same checkpoint) and deduplicated
by the reader. A resume after a driver kill first cuts the file to the reports the restored
experiment state knows (``truncate_history``): later ones belong to an abandoned timeline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.air.constants import EXPR_PARAM_FILE, EXPR_RESULT_FILE
from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.utils.util import SafeFallbackEncoder

from raymeta.fileio import atomic_write_bytes
from raymeta.finetune.hparams import row_hparams

REPORT_KEYS = (
    "val_loss",
    "val_accuracy",
    "best_val_loss",
    "trial_step",
    "interval_member_steps",
    "members",
    "interval_s",
    "wall_time",
    "events",
    "training_iteration",
)


class HistoryCallback(Callback):
    """Appends every trial report (``REPORT_KEYS`` and the trial's hyperparameters, the
    fine-tuning vocabulary's keys of its config) to the JSONL file ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        rec = {"trial": str(trial.trial_id), **{k: result[k] for k in REPORT_KEYS if k in result}}
        rec["hparams"] = row_hparams(trial.config)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")


class TrialClock(Callback):
    """Keeps ``config[key]`` of every trial equal to the ``trial_step`` it last reported: the
    steps the trial has trained itself. Tune calls callbacks after the scheduler, so this runs
    after a PBT exploit has replaced the trial's config with the cloned trial's, and the
    restarted trial reads its own clock from its config (``trainable.py``, "the budget is a
    cap")."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "trial_step" in result and trial.config.get(self.key) != result["trial_step"]:
            trial.set_config({**trial.config, self.key: int(result["trial_step"])})


def last_reports(experiment_state: bytes) -> dict[str, float]:
    """Per trial id, the ``wall_time`` of the last report a Tune ``experiment_state-*.json``
    holds. Plain JSON: the pickled blobs in the file are never decoded."""
    out: dict[str, float] = {}
    for trial_json, meta_json in json.loads(experiment_state).get("trial_data", []):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        last = meta.get("last_result")
        wall = last.get("wall_time") if isinstance(last, dict) else None
        out[str(trial["trial_id"])] = float(wall) if isinstance(wall, int | float) else -math.inf
    return out


def truncate_history(path: str | Path, last: dict[str, float]) -> int:
    """Drop the reports of ``path`` newer than ``last[trial]`` (all of an unknown trial's);
    returns how many. Rewritten atomically, and only when something goes."""
    p = Path(path)
    if not p.is_file():
        return 0
    keep, dropped = [], 0
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
            ok = float(rec.get("wall_time", math.inf)) <= last.get(str(rec["trial"]), -math.inf)
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False  # a line cut short by the kill
        if ok:
            keep.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(p, "".join(keep).encode())
    return dropped


class _KeepLocalLog:
    """A per-trial log file is continued, not replaced, when the trial restarts in this driver.

    Tune's file loggers copy the trial's *synced* copy over the local file whenever a trial
    (re)starts with a checkpoint; within one driver (every PBT exploit, every retry) that copy
    lags behind the snapshot, so reports vanish from ``result.json``. The local file, when
    there is one, is the whole log; a resumed driver (new staging directory) has none and
    restores the synced copy, which is the state the resume continues from."""

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if not Path(trial.local_path, file_name).is_file():
            super()._restore_from_remote(file_name, trial)  # type: ignore[misc]


class CsvLogger(_KeepLocalLog, CSVLoggerCallback):  # type: ignore[misc]
    """Tune's ``progress.csv`` logger, continuing the local file (``_KeepLocalLog``)."""


class JsonLogger(_KeepLocalLog, JsonLoggerCallback):  # type: ignore[misc]
    """Tune's JSON logger (``<trial>/result.json``, ``params.json``: what ``ExperimentAnalysis``
    and ``Tuner.restore(...).get_results()`` read), continuing the local file
    (``_KeepLocalLog``) and without its ``params.pkl``: nothing in Ray
    reads that pickle back, and a pickle in the experiment directory would be one more file the
    trust boundary (``trust.py``) must sign at the instant Tune rewrites it (each exploit)."""

    _SAVED_FILE_TEMPLATES = [EXPR_RESULT_FILE, EXPR_PARAM_FILE]

    def update_config(self, trial: Any, config: dict[str, Any]) -> None:
        self._trial_configs[trial] = config
        with Path(trial.local_path, EXPR_PARAM_FILE).open("w") as f:
            json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)


def logger_callbacks() -> list[Callback]:
    """Tune's per-trial logs: ``result.json`` + ``params.json``, ``progress.csv`` and, where
    tensorboardX is importable (it comes with ``ray[tune]``), TensorBoard event files. Given
    explicitly (Tune's automatic loggers stay off: they would add ``params.pkl``).

    tensorboardX warns "NaN or Inf found in input tensor." on the console for every such
    value it writes; a diverged member reports an infinite loss at every report (the run
    handles it: it is never picked), so a run with one printed dozens of those lines. The
    events are still written; only that warning is silenced."""
    import importlib.util
    import logging

    from ray.tune.logger import TBXLoggerCallback

    cbs: list[Callback] = [JsonLogger(), CsvLogger()]
    if importlib.util.find_spec("tensorboardX") is not None:
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        cbs.append(TBXLoggerCallback())
    return cbs


class ProgressCallback(Callback):
    """The run's progress line (``raymeta.progress``): member-steps reported of the budget and
    the best validation loss so far. Tune keeps callbacks in ``tuner.pkl``, so the line itself
    is not stored: the running driver sets ``line`` (class-wide; None: silent)."""

    line: Any = None  # a raymeta.progress.Progress, set by the driver around ``fit``

    def __init__(self, total_steps: int):
        self.total = total_steps
        self.steps: dict[str, int] = {}
        self.best = math.inf

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        members = int(result.get("members", 1) or 1)
        self.steps[str(trial.trial_id)] = int(result.get("trial_step", 0) or 0) * members
        best = result.get("best_val_loss")
        if isinstance(best, int | float) and best < self.best:
            self.best = float(best)
        if ProgressCallback.line is not None:
            note = f"best val {self.best:.4g}" if math.isfinite(self.best) else ""
            ProgressCallback.line.update(min(sum(self.steps.values()), self.total), note=note)
