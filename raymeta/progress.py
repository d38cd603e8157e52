"""One progress line for long commands, on stderr: ``what: done/total (pct) elapsed, ~left``.

Why a helper of our own: tqdm is not installed with Ray (nor with raymeta), and commands need
only a counter. On a terminal the line is rewritten in place (at most 5 times a second); when
stderr is a file or a pipe (CI logs, ``ray job`` logs, KubeRay pods) it is a plain line at
each tenth of the work, at least every ``every`` seconds while nothing else is printed, and at
the end, so a log grows by a few lines, never by one line per step. ``quiet`` prints nothing.
Used as a context manager it also ticks (the elapsed clock moves, and a plain line comes every
``every`` seconds) while one unit of work runs long without an update: a Conv4 chunk of a
priors fit takes minutes.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

EVERY_S = 30.0  # longest silence between plain lines while work goes on
TTY_EVERY_S = 0.2  # fastest in-place refresh on a terminal


def _clock(s: float) -> str:
    s = int(max(s, 0.0))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """A ``done/total`` counter printed to ``stream`` (stderr); call it as ``(done, total)``
    (the progress-callback signature ``fit_priors`` and the runners take) or ``update``."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        every: float = EVERY_S,
    ):
        self.what, self.total, self.quiet, self.every = what, total, quiet, every
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, OSError, ValueError):  # no such method, or a closed stream
            self.tty = False
        self.t0 = time.monotonic()
        self._last_t, self._last_tenth, self._done, self._note = -1.0e9, -1, 0, ""
        self._done0 = 0
        self._open = False  # a terminal line waiting for its newline
        self._started = False  # updated at least once: the ticker shows only a begun line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, done: int, total: int | None = None) -> None:
        self.update(done, total)

    def line(self) -> str:
        """The current progress text (without line ending)."""
        el = time.monotonic() - self.t0
        text = f"{self.what}: {self._done}"
        if self.total:
            text += f"/{self.total} ({100 * self._done // self.total}%)"
        text += f" {_clock(el)}"
        rate_n = self._done - self._done0  # units done since the clock started
        if self.total and rate_n > 0 and self._done < self.total:
            text += f", ~{_clock(el * (self.total - self._done) / rate_n)} left"
        return text + (f"  {self._note}" if self._note else "")

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """Record ``done`` (of ``total``, which may change) and print when it is time."""
        with self._lock:
            self._done, self.total = int(done), int(total) if total is not None else self.total
            if not self._started:  # the clock starts with the phase, not with the object
                self.t0, self._done0 = time.monotonic(), self._done
            self._note, self._started = note or self._note, True
            self._show(force=False)

    @property
    def finished(self) -> bool:
        return bool(self.total) and self._done >= int(self.total or 0)

    def _show(self, force: bool) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        finished = self.finished
        if self.tty:
            if finished:  # the line is done: end it, the next output starts on a fresh one
                if self._open or self._last_tenth != 10:
                    self._write("\r" + self.line() + "\x1b[K\n")
                self._open, self._last_tenth = False, 10
            elif force or now - self._last_t >= TTY_EVERY_S:
                self._write("\r" + self.line() + "\x1b[K")
                self._open, self._last_t = True, now
            return
        tenth = 10 * self._done // self.total if self.total else -1
        if force or finished or tenth != self._last_tenth or now - self._last_t >= self.every:
            if finished and self._last_tenth == tenth:
                return  # the end was printed already
            self._write(self.line() + "\n")
            self._last_t, self._last_tenth = now, tenth

    def _tick(self) -> None:
        while not self._stop.wait(1.0 if self.tty else self.every):
            with self._lock:
                if not self._started or self.finished:
                    continue  # not begun (a later phase) or done: nothing moves
                if self.tty or time.monotonic() - self._last_t >= self.every:
                    self._show(force=True)

    def close(self) -> None:
        """Stop ticking and end a terminal line (the next output starts on a fresh line)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._open and not self.quiet:
                self._write(f"\r{self.line()}\x1b[K\n")
            self._open = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the work it reports on
            self.quiet = True

    def __enter__(self) -> Progress:
        if not self.quiet and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="raymeta-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
