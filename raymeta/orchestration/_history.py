"""A driver-side Tune callback that appends every trial report to a JSONL file in ``--out``.

Why not Tune's own ``result.json``: when a trial restarts (PBT exploit, pause/resume, retry)
Tune copies the last *synced* copy of that file over the local one, so reports get lost. Here
each report is one appended line (a kill can only truncate the last line, which the reader
skips), and a resumed driver keeps appending to the same file. Reports recomputed after a
resume are bit-identical (counter-based randomness from the same checkpoint) and deduplicated
by the reader.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune import Callback

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
HPARAM_KEYS = ("lr", "optimizer", "weight_decay", "batch_size", "adapt", "model", "steps")


class HistoryCallback(Callback):
    def __init__(self, path: str):
        self.path = path

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        rec = {"trial": str(trial.trial_id), **{k: result[k] for k in REPORT_KEYS if k in result}}
        rec["hparams"] = {k: trial.config[k] for k in HPARAM_KEYS if k in trial.config}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
