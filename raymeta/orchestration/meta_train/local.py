"""``meta-train --local``: the same sharded computation in this process, without Ray.

With ``shards = W`` it draws exactly the tasks a W-worker Ray Train run draws, so it doubles as
the reference the distributed path is checked against and as a no-cluster fallback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint, save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train, preflight
from raymeta.errors import ConfigError
from raymeta.lock import locks_output
from raymeta.orchestration.meta_train.run_state import (
    fingerprint,
    out_status,
)
from raymeta.paths import probe_writable
from raymeta.plugins import blame


@locks_output("out")  # one writer per --out, whatever the command
def run_local_meta_train(
    cfg: MetaTrainConfig,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    log_every: int | None = None,
) -> MetaCheckpoint:
    """Meta-train in-process and write the meta-checkpoint to ``out`` atomically (a config
    with ``candidates`` trains each of them, see ``candidates.py``)."""
    cfg = cfg.validate()
    if cfg.candidates:
        from raymeta.orchestration.meta_train.candidates import train_candidates

        def one(single: MetaTrainConfig, part: Path, fresh: bool) -> MetaCheckpoint:
            return _run_one(single, part, fresh, progress, log_every)

        return train_candidates(cfg, out, one, preflight, overwrite, progress)
    return _run_one(cfg, out, overwrite, progress, log_every)


def _run_one(
    cfg: MetaTrainConfig,
    out: str | Path,
    overwrite: bool,
    progress: bool,
    log_every: int | None,
) -> MetaCheckpoint:
    preflight(cfg)
    out_p = Path(out).expanduser().absolute()
    status = out_status(out_p, fingerprint(cfg))
    if status == "same" and not overwrite:
        if progress:
            print(
                f"meta-train: {out_p} already holds the finished run of this config; nothing to do",
                flush=True,
            )
        return load_meta_checkpoint(out_p)
    if status != "same" and status not in ("absent", "empty") and not overwrite:
        raise ConfigError(f"--out {out_p} already holds {status} (pass --overwrite to replace it)")
    probe_writable(out_p)
    width = len(str(cfg.steps))

    def show(step: int, m: dict[str, Any]) -> None:
        val = m.get("val_loss")
        vs = f"{val:.4f}" if val is not None else "-"
        print(
            f"step {step:>{width}}/{cfg.steps}  meta-loss {m['meta_loss']:.4f}  val-loss {vs}  tasks/s {m['tasks_per_s']:.0f}",
            flush=True,
        )

    t0 = time.perf_counter()
    every = log_every or max(1, min(cfg.val_every, max(cfg.steps // 20, 1)))
    with blame((cfg.model, cfg.family), "in meta-training"):
        tr = meta_train(cfg, progress=show if progress else None, log_every=every)
    metrics = {"step": tr.step, "val_loss": float(tr.validate()["loss"])}
    save_meta_checkpoint(out_p, tr.to_checkpoint(metrics), overwrite=True)
    if progress:
        secs = time.perf_counter() - t0
        print(
            f"meta-train: done (local), {cfg.steps} steps in {secs:.1f} s, val-loss {metrics['val_loss']:.4f}; wrote {out_p}",
            flush=True,
        )
    return load_meta_checkpoint(out_p)
