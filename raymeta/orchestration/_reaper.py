"""Tie the embedded Ray's processes to the driver's lifetime, even after a SIGKILL.

Ray fate-shares the GCS and raylet with the driver that started them (``PR_SET_PDEATHSIG``),
but the raylet's dashboard and runtime-env agents notice their parent's death only by polling,
then block in a 60-second GCS publish to the (dead) GCS before exiting: after a killed driver
they linger for over a minute. So ``ray_context`` starts this tiny watcher (Linux only, no
imports beyond the standard library) in its own session: it follows the descendants of the
processes ``ray.init`` spawned (the agents included: ``ray_context`` passes every descendant
it has when ``ray.init`` returns, and the watcher rescans each second), and when its stdin pipe
from the driver closes (the driver exited or was killed), it SIGKILLs those still alive and
exits. (A process the raylet started less than a second before a kill may be missed; Ray's own
workers then exit by themselves within seconds.) Processes are identified by
pid and start time, so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 1.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) from ``/proc/PID/stat``, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    return int(fields[1]), int(fields[19])


def _table() -> dict[int, tuple[int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` right now."""
    table, found, frontier = _table(), set(), [pid]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, _) in table.items():
            if ppid == parent and p not in found:
                found.add(p)
                frontier.append(p)
    return found


def _follow(tracked: dict[int, int]) -> None:
    """Add every live descendant of the tracked processes (with its start time)."""
    table = _table()
    frontier = [p for p, start in tracked.items() if table.get(p, (0, -1))[1] == start]
    while frontier:
        parent = frontier.pop()
        for p, (ppid, start) in table.items():
            if ppid == parent and p not in tracked:
                tracked[p] = start
                frontier.append(p)


def _kill(tracked: dict[int, int]) -> None:
    for pid, start in tracked.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            with contextlib.suppress(OSError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    tracked: dict[int, int] = {}
    for pid in map(int, argv):
        if (st := _stat(pid)) is not None:
            tracked[pid] = st[1]
    while True:
        _follow(tracked)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready and not os.read(sys.stdin.buffer.fileno(), 4096):
            _follow(tracked)
            _kill(tracked)
            return 0


def start(roots: set[int]) -> subprocess.Popen[bytes] | None:
    """Start the watcher for ``roots`` and their descendants; the driver keeps its stdin open."""
    if not sys.platform.startswith("linux") or not roots:
        return None
    return subprocess.Popen(
        # run as a plain script: the standard library only, no package (or Ray) imports
        [sys.executable, "-S", os.path.abspath(__file__), *map(str, sorted(roots))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal must not stop it before the reap
        close_fds=True,
    )


def stop(watcher: subprocess.Popen[bytes] | None) -> None:
    """Close the pipe: the watcher kills what is left of the embedded Ray and exits."""
    if watcher is None or watcher.stdin is None:
        return
    watcher.stdin.close()
    try:
        watcher.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watcher.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
