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
    recs: list[dict[str, Any]] = []
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(rec, dict) and "trial" in rec and "val_loss" in rec:
                recs.append(rec)
    seen: set[tuple[Any, ...]] = set()
    hists: dict[str, TrialHistory] = {}
    for rec in sorted(recs, key=lambda r: float(r.get("wall_time", 0.0))):
        key = (rec["trial"], rec.get("trial_step"), rec.get("val_loss"), rec.get("best_val_loss"))
        if key in seen:
            continue
        seen.add(key)
        h = hists.setdefault(rec["trial"], TrialHistory(rec["trial"]))
        spent = (h.rows[-1]["spent"] if h.rows else 0) + int(
            rec.get("interval_member_steps", 0) or 0
        )
        row = {
            "trial": rec["trial"],
            "spent": spent,
            "trial_step": int(rec.get("trial_step", 0) or 0),
            "val_loss": _num(rec.get("val_loss")),
            "best_val_loss": _num(rec.get("best_val_loss")),
            "wall_time": float(rec.get("wall_time", 0.0) or 0.0),
            "hparams": dict(rec.get("hparams", {})),
            "events": json.loads(rec["events"])
            if isinstance(rec.get("events"), str) and rec["events"]
            else [],
        }
        if rec.get("val_accuracy") is not None:
            row["val_accuracy"] = float(rec["val_accuracy"])
        h.rows.append(row)
    return list(hists.values())


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
