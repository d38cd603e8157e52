"""Output paths checked before any work: a bad one is a one-line ``ConfigError``, nothing made.

``os.access`` is not enough (root passes it on a read-only mount), so writability is probed by
really creating a file: ``probe_writable`` makes and removes a named temporary file (the path a
run will write, its lock file beside it), ``check_output_dir`` / ``check_output_file`` an unnamed
one (``O_TMPFILE``), which leaves no entry behind even if killed. Shared by the CLI and the API.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from raymeta.errors import ConfigError
from raymeta.fileio import make_temp_file


def _nearest_existing(p: Path) -> Path:
    for parent in (p, *p.parents):
        try:
            if parent.exists():
                return parent
        except (OSError, ValueError):
            break
    return Path(".")


def _probe(directory: Path, flag: str, path: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not writable ({exc.strerror or exc})") from None


def check_output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` is (or can be created as) a directory this process can write into."""
    p = Path(path)
    if not str(path) or "\0" in str(path):
        raise ConfigError(f"{flag} must be a directory path, got {str(path)!r}")
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag} {p}: {exc.strerror or exc}") from None
    if exists and not is_dir:
        raise ConfigError(f"{flag} {p} exists and is not a directory")
    base = p if exists else _nearest_existing(p)
    if not base.is_dir():
        raise ConfigError(f"{flag} {p}: {base} is not a directory")
    _probe(base, flag, p)
    return p


def check_output_file(path: str | os.PathLike[str], flag: str, force: bool) -> Path:
    """``path`` names a file that may be (re)written: not a directory, not existing without
    ``force``, inside a writable directory (missing parents may be created)."""
    p = Path(path)
    if not str(path) or "\0" in str(path):
        raise ConfigError(f"{flag} must be a file path, got {str(path)!r}")
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except OSError as exc:
        raise ConfigError(f"{flag} {p}: {exc.strerror or exc}") from None
    if is_dir:
        raise ConfigError(f"{flag} {p} is a directory")
    if exists and not force:
        raise ConfigError(f"{p} exists (pass --force to overwrite)")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise ConfigError(f"{flag} {p}: {base} is not a directory")
    _probe(base, flag, p)
    return p


def probe_writable(out: Path, flag: str = "--out") -> None:
    """Refuse an ``out`` that cannot be created, before any work and without creating anything:
    its nearest existing ancestor must be a writable directory (probed with a temp file, which
    also works as root, where permission bits say nothing)."""
    base = out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"cannot write {flag} {out}: {base} is not a directory")
    try:
        fd, tmp = make_temp_file(base, out.name)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None
