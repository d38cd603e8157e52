"""Where a meta-training run keeps its state, and whether ``--out`` may be (re)used.

``--out`` only ever holds a complete meta-checkpoint. Everything in between lives in a hidden
sibling, ``<parent>/.<out-name>.meta-train/``: ``run.json`` (config fingerprint, Ray run name
and storage) and, unless ``--storage`` points elsewhere, Ray Train's run directory under
``ray/`` (its checkpoints and run snapshot). Rerunning the same command finds ``run.json``,
reuses the same ``RunConfig(name, storage_path)`` and so resumes from the last checkpoint; a
different config is refused unless ``overwrite``. The hidden directory is removed once
``--out`` has been written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymeta.core.checkpoint import check_replaceable, is_meta_checkpoint, read_meta
from raymeta.core.train import MetaTrainConfig
from raymeta.errors import CheckpointError, ConfigError
from raymeta.fileio import atomic_write_json
from raymeta.paths import probe_writable

RUN_FILE = "run.json"


def fingerprint(cfg: MetaTrainConfig | dict[str, Any]) -> str:
    """``MetaTrainConfig.fingerprint`` of the JSON-normalised config (tuples and lists agree)."""
    d = cfg.to_dict() if isinstance(cfg, MetaTrainConfig) else cfg
    return MetaTrainConfig.from_dict(json.loads(json.dumps(d, sort_keys=True))).fingerprint()


def state_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.meta-train"


@dataclass
class RunPlan:
    """What to do for one ``meta-train`` invocation."""

    out: Path
    state_dir: Path
    storage: str
    name: str
    fingerprint: str
    already_done: bool = False
    resuming: bool = False
    local_storage: bool = True
    discard: bool = False


def check_out_location(out: Path) -> None:
    """Refuse an ``--out`` inside an existing meta-checkpoint (``--overwrite --out META/weights``
    would replace part of it, and the swap would drop it from the parent) or inside a run's
    hidden state directory (which is removed once that run finishes)."""
    for anc in out.parents:
        if anc.name.startswith(".") and anc.name.endswith(".meta-train"):
            raise ConfigError(f"--out {out} lies inside the meta-train state directory {anc}")
        if is_meta_checkpoint(anc):
            raise ConfigError(
                f"--out {out} lies inside the meta-checkpoint {anc}; pick a path outside it"
            )


def out_status(out: Path, fp: str) -> str:
    """'absent', 'empty', 'same' (a complete checkpoint of this config) or a description of what is there."""
    check_out_location(out)
    if not out.exists():
        return "absent"
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return "empty"
    check_replaceable(out)  # foreign files: refused even with --overwrite (was: replaced)
    try:
        meta = read_meta(out)
        same = fingerprint(dict(meta.get("config", {}))) == fp
    except (CheckpointError, ConfigError, TypeError):
        return "a damaged meta-checkpoint (its meta.json cannot be read)"
    return "same" if same else "a meta-checkpoint of a different config"


def plan_run(
    cfg: MetaTrainConfig, out: str | Path, storage: str | None = None, overwrite: bool = False
) -> RunPlan:
    """Decide fresh start / resume / already done, refusing conflicts; writes nothing."""
    out_p = Path(out).expanduser().absolute()
    fp = fingerprint(cfg)
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
        check_storage(storage)
    status = out_status(out_p, fp)
    if status == "same" and not overwrite:
        return RunPlan(out_p, state_dir_for(out_p), storage or "", "", fp, already_done=True)
    if status != "same" and status not in ("absent", "empty") and not overwrite:
        raise ConfigError(f"--out {out_p} already holds {status} (pass --overwrite to replace it)")
    sdir = state_dir_for(out_p)
    default_storage = str(sdir / "ray")
    want_storage = storage or default_storage
    prev: dict[str, Any] | None = None
    run_file = sdir / RUN_FILE
    if run_file.is_file():
        try:
            prev = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            prev = None
    if prev is not None and not overwrite:
        if prev.get("fingerprint") != fp:
            raise ConfigError(
                f"an unfinished meta-train run with a different config exists for --out {out_p} (state in {sdir}); "
                "rerun with its config to resume or pass --overwrite to discard it"
            )
        if storage is not None and prev.get("storage") != storage:
            raise ConfigError(
                f"the unfinished run for --out {out_p} keeps its state in {prev.get('storage')}, not {storage} (pass --overwrite to start over)"
            )
        return RunPlan(
            out_p,
            sdir,
            str(prev["storage"]),
            str(prev["name"]),
            fp,
            resuming=True,
            local_storage=prev["storage"] == default_storage,
        )
    probe_writable(out_p)
    name = f"{out_p.name}-{fp}-{time.time_ns():x}"
    return RunPlan(
        out_p, sdir, want_storage, name, fp, local_storage=storage is None, discard=overwrite
    )


def check_storage(storage: str) -> None:
    """A local ``--storage`` must be (or be creatable as) a writable directory."""
    if "://" in storage:
        return
    p = Path(storage)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--storage {p} exists and is not a directory")
    probe_writable(p / "x" if p.is_dir() else p, "--storage")


def begin_run(plan: RunPlan, cfg: MetaTrainConfig) -> None:
    """Record the run (``run.json``) right before training starts, so refused runs leave nothing."""
    if plan.resuming:
        return
    if plan.discard:
        shutil.rmtree(plan.state_dir / "ray", ignore_errors=True)
    try:
        atomic_write_json(
            plan.state_dir / RUN_FILE,
            {
                "fingerprint": plan.fingerprint,
                "name": plan.name,
                "storage": plan.storage,
                "config": cfg.to_dict(),
            },
        )
        if plan.local_storage:
            os.makedirs(plan.storage, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write next to --out {plan.out}: {exc.strerror or exc}") from None


def finish_run(plan: RunPlan) -> None:
    """Drop the hidden run state once ``--out`` is complete (remote ``--storage`` is left alone)."""
    shutil.rmtree(plan.state_dir, ignore_errors=True)
