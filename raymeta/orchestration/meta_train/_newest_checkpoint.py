"""Resume from the newest complete checkpoint of this run, not the one Ray Train recorded.

Ray Train V2 persists a checkpoint to storage inside ``ray.train.report`` on the worker, but
records it in its run snapshot only when the controller next polls the workers (every ~2 s),
so after a killed driver or controller ``ray.train.get_checkpoint()`` is one or two checkpoints
older than the newest directory on storage, and the rerun repeats those steps. Every
checkpoint therefore carries a small manifest (``state.json``: step, config fingerprint and
sha256 of ``state.pt``); on start the workers scan the run's own directory
(``<storage>/<run name>/``, unique per run) for the newest checkpoint whose manifest matches
this config and whose ``state.pt`` matches its checksum (a partly uploaded one does not), and
use it when it is newer than Ray's. Resumed runs stay bit-identical: the state is the same
that an uninterrupted run had at that step.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
MANIFEST = "state.json"


def write_manifest(ckpt_dir: Path, step: int, fingerprint: str) -> None:
    """Write ``state.json`` for the ``state.pt`` already in ``ckpt_dir``."""
    digest = hashlib.sha256((ckpt_dir / STATE_FILE).read_bytes()).hexdigest()
    text = json.dumps({"step": step, "fingerprint": fingerprint, "sha256": digest})
    (ckpt_dir / MANIFEST).write_text(text)


def _filesystem(storage: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), storage


def newest_state(
    storage: str | None, run_name: str | None, fingerprint: str, after_step: int
) -> dict[str, Any] | None:
    """The state of this run's newest verified checkpoint with a step > ``after_step``, or None."""
    if not storage or not run_name:
        return None
    import pyarrow.fs

    try:
        fs, root = _filesystem(storage)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(f"{root.rstrip('/')}/{run_name}"))
    except (OSError, ValueError):  # no run directory yet / storage not reachable: use Ray's
        return None
    found: list[tuple[int, str, str]] = []
    for info in infos:
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith(
            "checkpoint_"
        ):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{MANIFEST}") as f:
                man = json.loads(f.readall())
            step = int(man["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no manifest (yet): an upload in progress or an older checkpoint
        if man.get("fingerprint") == fingerprint and step > after_step:
            found.append((step, info.path, str(man.get("sha256"))))
    for _step, path, digest in sorted(found, reverse=True):
        try:
            with fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
                data = f.readall()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            continue  # truncated or replaced: try the next older one
        state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return state
    return None
