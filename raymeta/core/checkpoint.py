"""The meta-checkpoint: a directory of weights-only tensors plus a checksummed ``meta.json``.

Layout::

    DIR/meta.json            format, version, family, candidates, config, metrics, versions, files{path: sha256}
    DIR/weights/<name>.pt    one state dict (str -> Tensor) per model candidate
    DIR/priors.json          optional, written by ``raymeta priors fit``

Weights load with ``torch.load(weights_only=True)`` (never unpickling objects) and every file's
sha256 is verified first, so a truncated or tampered checkpoint is a clear ``CheckpointError``.
"""

from __future__ import annotations

import json
import pickle
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raymeta._io import atomic_dir, sha256_file
from raymeta._version import __version__
from raymeta.core.models import ModelSpec
from raymeta.errors import CheckpointError
from raymeta.tasks._base import FamilySpec

FORMAT = "raymeta-meta-checkpoint"
VERSION = 1
META = "meta.json"
PRIORS = "priors.json"


@dataclass
class Candidate:
    """One meta-trained model: its spec, meta-parameters and how it was trained."""

    name: str
    spec: ModelSpec
    params: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaCheckpoint:
    family: FamilySpec
    candidates: dict[str, Candidate]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    priors: dict[str, Any] | None = None
    path: Path | None = None

    def candidate(self, name: str | None = None) -> Candidate:
        if name is None:
            return next(iter(self.candidates.values()))
        try:
            return self.candidates[name]
        except KeyError:
            raise CheckpointError(
                f"meta-checkpoint has no model candidate {name!r} (has {', '.join(self.candidates)})"
            ) from None


def versions() -> dict[str, str]:
    import numpy

    return {
        "raymeta": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _write_into(tmp: Path, ckpt: MetaCheckpoint) -> None:
    (tmp / "weights").mkdir()
    files: dict[str, str] = {}
    cands: dict[str, Any] = {}
    for name, c in ckpt.candidates.items():
        rel = f"weights/{name}.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in c.params.items()}, tmp / rel)
        files[rel] = sha256_file(tmp / rel)
        cands[name] = {"model": c.spec.to_dict(), "weights": rel, "info": c.info}
    if ckpt.priors is not None:
        (tmp / PRIORS).write_text(json.dumps(ckpt.priors, indent=2, sort_keys=True) + "\n")
        files[PRIORS] = sha256_file(tmp / PRIORS)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": ckpt.family.to_dict(),
        "candidates": cands,
        "config": ckpt.config,
        "metrics": ckpt.metrics,
        "versions": versions(),
        "files": files,
    }
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save_meta_checkpoint(path: str | Path, ckpt: MetaCheckpoint, overwrite: bool = False) -> Path:
    """Write ``ckpt`` atomically (temp dir + rename); an existing dir needs ``overwrite``."""
    try:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            _write_into(tmp, ckpt)
    except FileExistsError:
        raise CheckpointError(f"{path} already exists (pass overwrite to replace it)") from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot write meta-checkpoint {path}: {exc.strerror or exc}"
        ) from None
    except (TypeError, ValueError) as exc:  # e.g. metrics or config that are not JSON-able
        raise CheckpointError(f"cannot write meta-checkpoint {path}: {_first_line(exc)}") from None
    ckpt.path = Path(path)
    return Path(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"meta-checkpoint {p} does not exist or is not a directory")
    try:
        meta = json.loads((p / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p} is not a meta-checkpoint (no {META})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{p / META} is truncated or not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p / META} is not a raymeta meta-checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{p} has meta-checkpoint version {meta.get('version')}, this raymeta reads {VERSION}"
        )
    return meta


def verify_files(path: Path, meta: dict[str, Any]) -> None:
    for rel, digest in meta.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"meta-checkpoint {path} is missing {rel}")
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"checksum mismatch for {f}: the file is truncated or was modified"
            )


def load_meta_checkpoint(path: str | Path) -> MetaCheckpoint:
    """Read and verify a meta-checkpoint; any corruption is a one-line ``CheckpointError``."""
    p = Path(path)
    meta = read_meta(p)
    verify_files(p, meta)
    try:
        cands: dict[str, Candidate] = {}
        for name, c in meta["candidates"].items():
            params = _load_weights(p / c["weights"])
            cands[name] = Candidate(
                name, ModelSpec.from_dict(c["model"]), params, dict(c.get("info", {}))
            )
        priors = json.loads((p / PRIORS).read_text()) if PRIORS in meta.get("files", {}) else None
        return MetaCheckpoint(
            family=FamilySpec.from_dict(meta["family"]),
            candidates=cands,
            config=dict(meta.get("config", {})),
            metrics=dict(meta.get("metrics", {})),
            priors=priors,
            path=p,
        )
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"meta-checkpoint {p} is malformed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_weights(f: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, refusing anything but a ``str -> Tensor`` dict."""
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{f} is not a weights-only tensor file: {_first_line(exc)}"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{f} does not hold a dict of named tensors")
    return dict(obj)


def write_priors(path: str | Path, priors: dict[str, Any]) -> None:
    """Add or replace ``priors.json``, re-checksummed, by atomically swapping in a full copy."""
    p = Path(path)
    ckpt = load_meta_checkpoint(p)
    with atomic_dir(p, overwrite=True) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(p, tmp)
        (tmp / PRIORS).write_text(json.dumps(priors, indent=2, sort_keys=True) + "\n")
        meta = read_meta(tmp)
        meta["files"][PRIORS] = sha256_file(tmp / PRIORS)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    ckpt.priors = priors
