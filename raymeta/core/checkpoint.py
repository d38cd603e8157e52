"""The meta-checkpoint: a directory of weights-only tensors plus a checksummed ``meta.json``.

Layout::

    DIR/meta.json            format, version, family, candidates, config, metrics, versions, files{path: sha256}
    DIR/weights/<name>.pt    one state dict (str -> Tensor) per model candidate
    DIR/priors-<sha12>.json  optional, written by ``raymeta priors fit`` (named in meta.json's
                             ``priors``; checkpoints of earlier versions hold ``priors.json``)

Weights load with ``torch.load(weights_only=True)`` (never unpickling objects) and every file's
sha256 is verified first, so a truncated or tampered checkpoint is a clear ``CheckpointError``.

Writers never leave a moment where the path does not verify: a whole checkpoint is swapped in
at once (``_io.atomic_dir``), and ``write_priors`` adds the priors under a new, content-named
file that the old ``meta.json`` does not list, then replaces ``meta.json`` (one rename) with a
manifest that lists it, then removes the previous priors file that nothing lists any more.
Every writer holds the path's lock (``raymeta.lock``) while it writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raymeta import __version__, checks
from raymeta.core.engine import LR_PREFIX, LSLR_PREFIX
from raymeta.core.models import ModelSpec, check_model_fits, expected_shapes
from raymeta.errors import CheckpointError, ConfigError
from raymeta.fileio import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    clean_stale,
    read_json_file,
    sha256_file,
)
from raymeta.lock import output_lock
from raymeta.tasks.base import FamilySpec

FORMAT = "raymeta-meta-checkpoint"
VERSION = 1
META = "meta.json"
PRIORS = "priors.json"  # the priors file of checkpoints written before versioned names
_PRIORS_RE = re.compile(r"^priors(-[0-9a-f]{12})?\.json$")


@dataclass
class Candidate:
    """One meta-trained model: its spec, meta-parameters and how it was trained."""

    name: str
    spec: ModelSpec
    params: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def learned_rates(self) -> str | None:
        """``LSLR`` or ``Meta-SGD`` when the parameters carry learned inner rates (used by the
        engine's own inner loop, ``MetaEngine.evaluate``; fine-tuning applies one rate per
        member and ignores them), else None."""
        if any(k.startswith(LSLR_PREFIX) for k in self.params):
            return "LSLR"
        if any(k.startswith(LR_PREFIX) for k in self.params):
            return "Meta-SGD"
        return None


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
    priors_name = None
    if ckpt.priors is not None:
        data = _priors_bytes(ckpt.priors)
        priors_name = _priors_name(data)
        (tmp / priors_name).write_bytes(data)
        files[priors_name] = sha256_file(tmp / priors_name)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": ckpt.family.to_dict(),
        "candidates": cands,
        "candidate_order": list(cands),  # meta.json sorts keys; the first is the default
        "config": ckpt.config,
        "metrics": ckpt.metrics,
        "versions": versions(),
        "files": files,
        **({"priors": priors_name} if priors_name else {}),
    }
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _priors_bytes(priors: dict[str, Any]) -> bytes:
    return (json.dumps(priors, indent=2, sort_keys=True) + "\n").encode()


def _priors_name(data: bytes) -> str:
    return f"priors-{hashlib.sha256(data).hexdigest()[:12]}.json"


def priors_name(meta: dict[str, Any]) -> str | None:
    """The checkpoint's priors file (relative name), or None if it has no priors."""
    files = meta.get("files", {})
    name = meta.get("priors")
    if name is None:
        return PRIORS if PRIORS in files else None
    if not isinstance(name, str) or not _PRIORS_RE.match(name) or name not in files:
        raise CheckpointError(f"meta.json names priors file {name!r} that it does not list")
    return name


def priors_file(path: str | Path) -> Path | None:
    """Where a meta-checkpoint's priors are (``None`` if it has none)."""
    name = priors_name(read_meta(path))
    return None if name is None else Path(path) / name


def save_meta_checkpoint(path: str | Path, ckpt: MetaCheckpoint, overwrite: bool = False) -> Path:
    """Write ``ckpt`` atomically (temp dir swapped in whole); an existing dir needs ``overwrite``."""
    # checked first: a None ckpt was an AttributeError, an int path a TypeError, and
    # overwrite="no" replaced an existing checkpoint
    checks.path("path", path)
    if not isinstance(ckpt, MetaCheckpoint):
        raise ConfigError(f"ckpt must be a MetaCheckpoint, got {checks.show_value(ckpt)}")
    checks.boolean("overwrite", overwrite)
    if overwrite:
        check_replaceable(path, "path")
    with output_lock(path, "meta-checkpoint"):
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
            raise CheckpointError(
                f"cannot write meta-checkpoint {path}: {_first_line(exc)}"
            ) from None
    ckpt.path = Path(path)
    return Path(path)


MAX_META_BYTES = 64 << 20  # meta.json holds specs, configs and metrics: never this large


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory, with its format, version and file manifest
    checked; anything unreadable (a directory, unreadable, not UTF-8, not JSON) is one line."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"meta-checkpoint {p} does not exist or is not a directory")
    f = p / META
    if not f.exists():
        raise CheckpointError(f"{p} is not a meta-checkpoint (no {META})")
    meta = read_json_file(f, MAX_META_BYTES, CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{f} is not a raymeta meta-checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{p} has meta-checkpoint version {meta.get('version')!r}, this raymeta reads {VERSION}"
        )
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{f}: 'files' must map relative paths to sha256 digests")
    for rel, digest in files.items():
        check_member(p, rel)
        if not isinstance(digest, str) or len(digest) != 64:
            raise CheckpointError(f"{f}: the sha256 of {rel!r} is malformed")
    return meta


def check_replaceable(path: str | Path, flag: str = "--out") -> None:
    """Refuse to replace ``path`` if it is a directory holding entries but no ``meta.json``.

    Replacing a checkpoint (``overwrite``) swaps the whole directory: ``raymeta meta-train
    --out . --overwrite`` in a project deleted the project's files, and the refusal without
    ``--overwrite`` even suggested it. A meta-checkpoint (of another config, or damaged: its
    ``meta.json`` is there) and an empty directory may still be replaced."""
    p = Path(path)
    try:
        if not p.is_dir() or (p / META).exists():
            return
        names = sorted(e.name for e in p.iterdir())
    except OSError:
        return  # unreadable: the write itself reports it
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ConfigError(
            f"{flag} {p} holds files that are not a meta-checkpoint ({shown}); overwrite "
            "replaces only a meta-checkpoint or an empty directory: pick a new directory"
        )


def is_meta_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a raymeta meta-checkpoint (a readable ``meta.json`` of ours, not
    someone else's file of that name): outputs placed inside one are refused (meta-train's
    ``--out``, sweep results)."""
    p = Path(path)
    try:
        if not (p / "meta.json").is_file():
            return False
        read_meta(p)
    except (CheckpointError, OSError):
        return False
    return True


def check_member(path: Path, rel: Any) -> Path:
    """``path / rel`` for a path listed in a manifest: relative, no ``..``, no symlink out.

    A crafted ``meta.json`` naming ``../../outside.pt`` or ``/etc/passwd`` must never make raymeta
    read (or checksum, or load) a file outside the checkpoint directory."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise CheckpointError(f"meta-checkpoint {path}: bad file name {rel!r} in its manifest")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or rel.startswith("/"):
        raise CheckpointError(
            f"meta-checkpoint {path}: file {rel!r} in its manifest lies outside the checkpoint"
        )
    f = path / rel
    try:
        inside = f.resolve().is_relative_to(path.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise CheckpointError(f"meta-checkpoint {path}: {rel!r} resolves outside the checkpoint")
    return f


def verify_files(path: Path, meta: dict[str, Any]) -> None:
    """Every manifest file is present, inside the checkpoint, and has its recorded sha256."""
    for rel, digest in meta.get("files", {}).items():
        f = check_member(path, rel)
        if not f.is_file():
            raise CheckpointError(f"meta-checkpoint {path} is missing {rel}")
        try:
            actual = sha256_file(f)
        except OSError as exc:
            raise CheckpointError(f"cannot read {f}: {exc.strerror or exc}") from None
        if actual != digest:
            raise CheckpointError(
                f"checksum mismatch for {f}: the file is truncated or was modified"
            )


def _candidate(p: Path, meta: dict[str, Any], name: Any, c: Any) -> Candidate:
    """One candidate from ``meta.json``: its weights file must be listed in the manifest (so
    verified), and its tensors must be exactly the model's parameters, names and shapes."""
    if not isinstance(name, str) or not isinstance(c, dict):
        raise CheckpointError(f"meta-checkpoint {p}: malformed candidate {name!r}")
    rel = c.get("weights")
    wfile = check_member(p, rel)
    if rel not in meta.get("files", {}):
        raise CheckpointError(
            f"meta-checkpoint {p}: weights {rel!r} of candidate {name!r} are not in its manifest"
        )
    try:
        spec = ModelSpec.from_dict(c.get("model"))  # type: ignore[arg-type]  # checked there
        check_model_fits(spec, what=f"meta-checkpoint {p} candidate {name!r}")
        expected = expected_shapes(spec)
    except ConfigError as exc:
        raise CheckpointError(f"meta-checkpoint {p}: candidate {name!r}: {exc}") from None
    params = load_weights(wfile)
    check_weights(params, expected, spec, wfile)
    info = c.get("info", {})
    if not isinstance(info, dict):
        raise CheckpointError(f"meta-checkpoint {p}: candidate {name!r} info is not a mapping")
    _check_info(p, name, info)
    return Candidate(name, spec, params, dict(info))


def _check_info(p: Path, name: str, info: dict[str, Any]) -> None:
    """The ``info`` fields that fine-tuning and the reports read (the meta-training inner lr
    is the default fine-tune's lr) have the types meta-train writes; a tampered one is one
    ``CheckpointError`` here, not an internal error in the middle of a priors fit or tune."""
    where = f"meta-checkpoint {p}: candidate {name!r} info"
    lr = info.get("inner_lr")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0
    ):
        raise CheckpointError(f"{where}: inner_lr must be a finite number > 0, got {lr!r}")
    steps = info.get("inner_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise CheckpointError(f"{where}: inner_steps must be an integer >= 0, got {steps!r}")
    if not isinstance(info.get("metrics", {}), dict):
        raise CheckpointError(f"{where}: metrics must be a mapping, got {info['metrics']!r}")
    if not isinstance(info.get("algorithm", ""), str):
        raise CheckpointError(f"{where}: algorithm must be a string, got {info['algorithm']!r}")


def check_weights(
    params: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    spec: ModelSpec,
    wfile: Path | str,
) -> None:
    """The tensors are exactly the model's parameters (Meta-SGD's ``lr.*`` tensors allowed, or
    MAML++'s per-step ``lslr.*`` rates), with the model's shapes, in floating point; anything
    else is one ``CheckpointError``."""
    from raymeta.plugins import short_name

    label = short_name(spec.name)
    expected = {**expected, **_extra_shapes(params, expected)}
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"has an unexpected tensor {extra[0]!r}"
        raise CheckpointError(
            f"{wfile} does not match model {label!r}: {what} "
            f"({len(missing)} missing, {len(extra)} unexpected)"
        )
    for k, shape in expected.items():
        t = params[k]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CheckpointError(
                f"{wfile}: tensor {k!r} is {t.dtype} {tuple(t.shape)}, model {label!r} "
                f"needs floating point {shape}"
            )


def _extra_shapes(
    params: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Meta-SGD checkpoints also hold one learning-rate tensor per parameter (all or none);
    LSLR (MAML++) checkpoints one ``[S]`` tensor of per-step rates per adapted parameter (all
    parameters, or ANIL's ``head.*`` ones), every one with the same S >= 1."""
    extra: dict[str, tuple[int, ...]] = {}
    if any(k.startswith(LR_PREFIX) for k in params):
        extra.update({LR_PREFIX + k: v for k, v in expected.items()})
    lslr = [params[k] for k in params if k.startswith(LSLR_PREFIX)]
    if lslr:  # S: the commonest length, so the odd tensor out is the one the error names
        lengths = [int(t.shape[0]) for t in lslr if t.dim() == 1 and t.shape[0] >= 1]
        s = max(set(lengths), key=lengths.count) if lengths else 1
        heads = [k for k in expected if k.startswith("head.")]
        body_rates = any(LSLR_PREFIX + k in params for k in expected if k not in heads)
        adapted = list(expected) if body_rates else heads
        extra.update({LSLR_PREFIX + k: (s,) for k in adapted})
    return extra


def load_meta_checkpoint(path: str | Path) -> MetaCheckpoint:
    """Read and verify a meta-checkpoint; any corruption is a one-line ``CheckpointError``."""
    p = Path(checks.path("path", path))
    meta = read_meta(p)
    verify_files(p, meta)
    try:
        raw = meta["candidates"]
        if not isinstance(raw, dict) or not raw:
            raise CheckpointError(f"meta-checkpoint {p} has no model candidates")
        order = meta.get("candidate_order")
        if not isinstance(order, list) or sorted(map(str, order)) != sorted(raw):
            order = list(raw)
        cands = {name: _candidate(p, meta, name, raw[name]) for name in order}
        priors = None
        pname = priors_name(meta)
        if pname is not None:
            try:
                priors = json.loads((p / pname).read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise CheckpointError(f"{p / pname} is unreadable or not JSON") from None
            if not isinstance(priors, dict):
                raise CheckpointError(f"{p / pname} does not hold a priors mapping")
        family = meta["family"]
        if not isinstance(family, dict) or not isinstance(family.get("name"), str):
            raise CheckpointError(f"meta-checkpoint {p}: malformed family {family!r}"[:200])
        if not isinstance(family.get("options", {}), dict):
            raise CheckpointError(f"meta-checkpoint {p}: the family options are not a mapping")
        for key in ("config", "metrics"):
            if not isinstance(meta.get(key, {}), dict):
                raise CheckpointError(f"meta-checkpoint {p}: {key!r} is not a mapping")
        return MetaCheckpoint(
            family=FamilySpec.from_dict(family),
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


def weights_load_error(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line. Torch's own message
    opens with advice to rerun with ``weights_only=False`` ("will likely succeed, but it can
    result in arbitrary code execution"), which raymeta never does and a user of a raymeta
    command cannot: only its ``WeightsUnpickler`` detail is kept."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
        detail = detail.split(". ", 1)[0].rstrip(".")  # its first sentence: no allowlist advice
        return (
            f"torch.load(weights_only=True) refused it ({detail or 'not plain tensors'}); "
            "raymeta reads only a dict of tensors saved with torch.save, never other pickles"
        )
    return _first_line(exc)


def load_weights(f: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, refusing anything but a ``str -> Tensor`` dict."""
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{f} is not a weights-only tensor file: {weights_load_error(exc)}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # the common {"state_dict": ..., "epoch": ...} layout
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{f} does not hold a dict of named tensors")
    return dict(obj)


def write_priors(
    path: str | Path,
    priors: dict[str, Any],
    check: Callable[[MetaCheckpoint], None] | None = None,
) -> None:
    """Add or replace the checkpoint's priors without a moment where it does not verify.

    The storage step only: it knows priors as JSON, not their format (the ``priors`` and
    ``finetune`` layers above this one do). ``raymeta.write_priors``
    (``raymeta.finetune.priors_file.write_priors``) checks the mapping is priors a tune of
    this checkpoint can use, passing ``check``, called with the loaded checkpoint under the
    write lock before anything is written.

    Order (each step one atomic rename, so a kill anywhere leaves a checkpoint with the old or
    the new priors): write ``priors-<sha12>.json`` (not yet listed, so the old manifest still
    verifies), replace ``meta.json`` by a manifest that lists it, remove the old priors file.
    Leftovers of a killed earlier write (temporaries, an unlisted priors file) go first.

    ``priors`` must be a non-empty JSON mapping (``Priors.to_dict()``), checked before any
    file is touched: a string or ``{}`` replaced the checkpoint's good priors, and every later
    ``load_priors`` / tune of it failed; a value JSON cannot hold was a TypeError traceback."""
    p = Path(checks.path("path", path))
    if not isinstance(priors, dict) or not priors:
        raise ConfigError(
            "priors must be a priors mapping (raymeta.fit_priors(...).to_dict()), got "
            + checks.show_value(priors)
        )
    try:
        _priors_bytes(priors)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"priors must be JSON data: {_first_line(exc)}") from None
    with output_lock(p, "meta-checkpoint"):
        ckpt = load_meta_checkpoint(p)  # refuse to build on a corrupt checkpoint
        if check is not None:
            check(ckpt)
        meta = read_meta(p)
        old = priors_name(meta)
        try:
            clean_stale(p)
            for f in os.listdir(p):
                if _PRIORS_RE.match(f) and f != old:
                    os.unlink(p / f)  # a killed write's priors that no manifest lists
            data = _priors_bytes(priors)
            name = _priors_name(data)
            atomic_write_bytes(p / name, data)
            files = {k: v for k, v in meta["files"].items() if k != old}
            files[name] = hashlib.sha256(data).hexdigest()
            meta["files"], meta["priors"] = files, name
            atomic_write_json(p / META, meta)
            if old is not None and old != name:
                os.unlink(p / old)
        except OSError as exc:
            raise CheckpointError(f"cannot write priors into {p}: {exc.strerror or exc}") from None
