"""One writer per output path: an advisory ``flock`` on a sibling lock file, held for a run.

Why a sibling (``<parent>/.<name>.lock``) and not a file inside the output: a meta-checkpoint
directory is replaced as a whole (``_io.replace_dir``), which would swap a lock file inside it
away with the old tree, and a refused run must leave nothing in ``--out``. Every writer of a path
(meta-train, tune, sweep, priors fit, ``save_meta_checkpoint``) takes the same lock, so they
exclude each other whatever the command.

The lock is exclusive and non-blocking: a second writer fails at once with
``ConfigError("--out DIR is in use by pid N")``. The kernel drops it when the holder dies
(SIGKILL included), so a crashed run never blocks the next one. The lock file, and any parent
directories made for it, are removed on release; because of that, a taker checks after locking
that the file it locked is still the one at the path (else it retries), so two takers can never
both believe they hold the lock. Taking a lock this process already holds is a no-op (nested
writers such as meta-train -> ``save_meta_checkpoint``). ``flock`` is per host on most network
filesystems: one writer per path is guaranteed for writers on one machine.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from raymeta.errors import ConfigError

P = ParamSpec("P")
R = TypeVar("R")

_held: dict[str, int] = {}  # lock path -> nesting depth, for locks this process holds
_guard = threading.Lock()


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of an output path: same for every spelling of the path (``a/../b``, ``./b``)."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    return real.parent / f".{real.name or 'out'}.lock"


def _make_parents(d: Path) -> list[Path]:
    """``mkdir -p d``, returning the directories it created (deepest last)."""
    missing: list[Path] = []
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    made: list[Path] = []
    for m in reversed(missing):
        try:
            m.mkdir()
        except FileExistsError:
            continue
        made.append(m)
    return made


def _nearest_existing(d: Path) -> Path:
    while not d.exists() and d.parent != d:
        d = d.parent
    return d


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:  # not empty (the run wrote there) or already gone
            return


def _holder(fd: int) -> str:
    """The pid recorded by the lock's holder (it writes it right after locking)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode().strip()
            if text:
                return f"pid {int(text)}"
        time.sleep(0.025)
    return "another process"


class _Lock:
    def __init__(self, path: Path, what: str, shown: str):
        self.file, self.what, self.shown = path, what, shown
        self.fd = -1
        self.made: list[Path] = []

    def acquire(self) -> None:
        for _ in range(100):
            try:
                self.made += _make_parents(self.file.parent)
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:  # a releasing holder removed the parent we just made
                continue
            except OSError as exc:
                _remove_empty(self.made)
                why = exc.strerror or str(exc)
                if exc.errno == errno.ENOTDIR:  # a parent of the output is a file
                    why = f"{_nearest_existing(self.file.parent)} is not a directory"
                raise ConfigError(f"cannot write {self.what} {self.shown}: {why}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                os.close(fd)
                raise ConfigError(f"{self.what} {self.shown} is in use by {who}") from None
            st = os.fstat(fd)
            try:
                now = os.stat(self.file)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # locked a file its previous holder had just removed: retry
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return
        raise ConfigError(f"cannot lock {self.what} {self.shown}: the lock file keeps changing")

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)  # while still locked, so no one holds a lock on a removed file
        os.close(self.fd)
        self.fd = -1
        _remove_empty(self.made)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], what: str = "--out") -> Iterator[None]:
    """Hold the write lock of ``path`` for the block; ``ConfigError`` if another process has it.

    ``what`` names the path in the message (``--out DIR is in use by pid N``)."""
    shown = str(Path(path).expanduser().absolute())
    key = str(lock_path(path))
    with _guard:
        if key in _held:
            _held[key] += 1
            lock = None
        else:
            lock = _Lock(Path(key), what, shown)
            lock.acquire()
            _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held[key] -= 1
            if _held[key] == 0:
                del _held[key]
                if lock is not None:
                    lock.release()


def locks_output(
    param: str = "out", what: str = "--out"
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: hold ``output_lock`` on the function's ``param`` argument for the whole call."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            with output_lock(bound.arguments[param], what):
                return fn(*args, **kwargs)

        return run

    return wrap
