"""Atomic file and directory writes, stale-temporary cleanup and checksums.

Every artifact raymeta writes (checkpoints, priors, reports, result parts) goes to a temporary
sibling first and is published by one rename, so a crash or kill never leaves a half-written
file at the final name.

Directories are replaced without a gap: the new tree is swapped with the old one in a single
``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, ...; ``renamex_np
(RENAME_SWAP)`` on macOS), so the path resolves to the complete old or the complete new tree at
every instant. Where neither exists (other systems, or a filesystem that refuses the flag) it
falls back to two renames; a kill between them leaves the old tree at ``.<name>.old-<pid>-*``,
which the next write to that path moves back before doing anything else.

Temporaries are named ``.<name>.<pid>-<random>.tmp`` (and ``.<name>.old-<pid>-<random>``), so a
later writer can tell a killed writer's leftovers (its pid is gone) from a live writer's and
remove only the former (``clean_stale``). Temporaries get the permissions a plain ``open`` or
``mkdir`` would give under the process umask, not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_OLD_RE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)(?:-[A-Za-z0-9_]+)?$")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` has to
    set it to read it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


# ``scheme://`` as typed, or ``scheme:/`` once ``Path`` collapsed it (one letter: a drive)
_URI_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def local_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path``; a URI (``s3://b/x``) is an ``OSError``, never a local ``s3:``
    directory: artifacts go to local or mounted paths (the CLI turns ``file://`` URIs into
    paths and refuses others in one line, ``raymeta.paths``)."""
    text = os.fspath(path)
    if _URI_START.match(text):
        raise OSError(
            errno.EINVAL,
            "a URI, not a local path (object stores take Ray's results: --storage)",
            text,
        )
    return Path(path)


def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def make_temp_file(directory: Path, name: str) -> tuple[int, str]:
    """``mkstemp`` next to ``directory/name`` with a pid-tagged name and umask permissions."""
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(name), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def make_temp_dir(directory: Path, name: str) -> Path:
    """``mkdtemp`` next to ``directory/name`` with a pid-tagged name and umask permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(name), suffix=".tmp", dir=directory))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a process on this host (a zombie or another user's counts)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def clean_stale(directory: Path, name: str | None = None) -> list[str]:
    """Remove temporaries left in ``directory`` by killed writers (of ``name``, or of any name).

    A temporary counts as stale only when the pid in its name is not a live process: a live
    writer's temporary is never touched. If ``name`` itself is missing and a killed writer moved
    the old tree aside (the two-rename fallback), that tree is moved back first."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    olds: list[Path] = []
    for entry in entries:
        m = _TMP_RE.match(entry) or _OLD_RE.match(entry)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if pid_alive(int(m.group("pid"))):
            continue
        if m.re is _OLD_RE:
            olds.append(directory / entry)
        else:
            _remove(directory / entry)
            removed.append(entry)
    for old in sorted(olds, key=lambda p: p.stat().st_mtime, reverse=True):
        target = directory / str(_OLD_RE.match(old.name).group("name"))  # type: ignore[union-attr]
        if not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(old, target)
                removed.append(old.name)
                continue
        _remove(old)
        removed.append(old.name)
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    p = local_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(p.parent, p.name)
    fd, tmp = make_temp_file(p.parent, p.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


_EXCHANGE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)  # the running process's symbols, libc included
    except OSError:
        return None


_LIBC = _libc()


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap the entries ``a`` and ``b`` (both must exist); False where the OS or the
    filesystem cannot, in which case nothing was changed."""
    fa, fb = os.fsencode(a), os.fsencode(b)
    if _LIBC is None:
        return False
    if sys.platform.startswith("linux"):
        fn = getattr(_LIBC, "renameat2", None)
        if fn is None:
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(-100, fa, -100, fb, 2)  # AT_FDCWD, RENAME_EXCHANGE
    elif sys.platform == "darwin":
        fn = getattr(_LIBC, "renamex_np", None)
        if fn is None:
            return False
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(fa, fb, 2)  # RENAME_SWAP
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(fa), None, os.fsdecode(fb))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))


def replace_dir(tmp: Path, final: Path) -> None:
    """Publish the complete tree ``tmp`` at ``final``, replacing what is there without a gap
    (see the module doc for the fallback); ``tmp`` is gone afterwards."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
    elif exchange(tmp, final):
        _remove(tmp)  # now the old tree
    else:
        old = final.parent / f".{final.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory that replaces ``path`` only if the block finishes without error.

    An existing ``path`` stays in place, complete, until the new tree is, then both are swapped
    at once (``replace_dir``). Killed writers' temporaries of ``path`` are cleaned first."""
    final = local_path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent, final.name)
    if final.exists() and not overwrite:
        raise FileExistsError(str(final))
    tmp = make_temp_dir(final.parent, final.name)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def read_json_file(f: Path, max_bytes: int, error: type[Exception]) -> Any:
    """The JSON value in ``f`` (a manifest or report we wrote), refusing what is not a regular
    file, larger than ``max_bytes``, unreadable, not UTF-8 or not JSON with one ``error`` line
    (a crafted file must not make raymeta read gigabytes or recurse without bound)."""
    try:
        if not f.is_file():
            raise error(f"{f} is not a regular file")
        with f.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {f}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise error(f"{f} is larger than {max_bytes >> 20} MiB")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise error(f"{f} is truncated or not JSON") from None
