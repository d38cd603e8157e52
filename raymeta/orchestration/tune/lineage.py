"""Per-trial histories of a finished Tune run: result rows, PBT lineage, population curve.

Why from the trials' own reports: a trial's ``training_iteration`` is inherited from the trial
it cloned in a PBT exploit, so member-steps are counted from what each trial reports it
trained itself (``interval_member_steps``), and exploits are the events the trainable recorded
when it restored another trial's checkpoint. Tune's ``pbt_global.txt`` (when it is on local
disk) is parsed as a cross-check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialHistory:
    trial_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per report, in order
    error: str | None = None


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf
    return f if math.isfinite(f) else math.inf


def read_histories(path: str | Path) -> list[TrialHistory]:
    """Per-trial report rows from the ``HistoryCallback`` file, deduplicated, in time order."""
    p = Path(path)
    rows: list[tuple[dict[str, Any], str]] = []
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if not (isinstance(rec, dict) and "trial" in rec and "val_loss" in rec):
                continue
            try:
                row = _row(rec)
                same = json.dumps([rec.get(k) for k in ("trial_step", "val_loss", "best_val_loss")])
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # an edited line: of no more use than one cut short
            rows.append((row, same))
    seen: set[tuple[str, str]] = set()
    hists: dict[str, TrialHistory] = {}
    for row, same in sorted(rows, key=lambda r: r[0]["wall_time"]):
        key = (row["trial"], same)
        if key in seen:
            continue
        seen.add(key)
        h = hists.setdefault(row["trial"], TrialHistory(row["trial"]))
        row["spent"] += h.rows[-1]["spent"] if h.rows else 0
        h.rows.append(row)
    return list(hists.values())


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    """One report of the history file, typed (``spent``: this report's member-steps alone)."""
    if not isinstance(rec["trial"], str):
        raise TypeError("trial id")
    events = (
        json.loads(rec["events"]) if isinstance(rec.get("events"), str) and rec["events"] else []
    )
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise TypeError("events")
    wall = float(rec.get("wall_time", 0.0) or 0.0)
    if not math.isfinite(wall):
        raise ValueError("wall_time")
    row = {
        "trial": rec["trial"],
        "spent": int(rec.get("interval_member_steps", 0) or 0),
        "trial_step": int(rec.get("trial_step", 0) or 0),
        "val_loss": _num(rec.get("val_loss")),
        "best_val_loss": _num(rec.get("best_val_loss")),
        "wall_time": wall,
        "hparams": dict(rec.get("hparams", {})),
        "events": events,
    }
    if rec.get("val_accuracy") is not None:
        row["val_accuracy"] = float(rec["val_accuracy"])
    return row


def lineage(histories: list[TrialHistory]) -> list[dict[str, Any]]:
    """Trial-level exploit/explore events and restores, ordered by time."""
    out = []
    for h in histories:
        for r in h.rows:
            for e in r["events"]:
                if e.get("kind") in ("exploit", "restore"):
                    out.append({**e, "wall_time": r["wall_time"]})
    return sorted(out, key=lambda e: e["wall_time"])


def member_events(histories: list[TrialHistory]) -> int:
    return sum(
        1
        for h in histories
        for r in h.rows
        for e in r["events"]
        if e.get("kind") == "member_exploit"
    )


def pbt_global(exp_dir: str | Path) -> list[dict[str, Any]]:
    """Tune's own PBT log (``[target, clone, target_iter, clone_iter, old, new]`` per line)."""
    p = Path(str(exp_dir)) / "pbt_global.txt"
    if "://" in str(exp_dir) or not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            t, s, ti, si, old, new = json.loads(line)
        except (ValueError, TypeError):
            continue
        out.append(
            {
                "target": t,
                "source": s,
                "target_iteration": ti,
                "source_iteration": si,
                "old": old,
                "new": new,
            }
        )
    return out


def population_curve(histories: list[TrialHistory]) -> list[tuple[int, float]]:
    """(population member-steps spent so far, best validation loss so far), in wall-time order."""
    rows = sorted((r for h in histories for r in h.rows), key=lambda r: r["wall_time"])
    out, spent, best = [], 0, math.inf
    prev = {h.trial_id: 0 for h in histories}
    for r in rows:
        spent += r["spent"] - prev[r["trial"]]
        prev[r["trial"]] = r["spent"]
        best = min(best, r["best_val_loss"])
        out.append((spent, best))
    return out


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """Member-steps the population needed to get its best val loss to ``target`` (None: never)."""
    for spent, best in curve:
        if best <= target:
            return spent
    return None
