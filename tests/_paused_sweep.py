"""A sweep that stops at a known point to be killed there: ``python _paused_sweep.py SPEC OUT
WAITING PARTS (--address ADDRESS | --local)`` runs the sweep of SPEC into OUT writing 2 units
per part; once PARTS parts are published it creates the file WAITING and waits (its workers
stay mid-batch) for the test to SIGKILL it.

Why: the kill tests of tests/test_sweep.py and tests/test_sweep_local.py polled for published
parts and then killed, and a sweep fast enough to finish between two polls left nothing to
resume (``assert 12 < 12``). Here the sweep cannot finish before the kill. The pause wraps
``ResultSink.append_keyed`` in this process only; production code carries no hook.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from raymeta.orchestration.sweep.config import load_sweep
from raymeta.orchestration.sweep.run import run_sweep
from raymeta.results.sink import ResultSink


def main() -> None:
    spec, out, waiting, parts, how = sys.argv[1:6]
    append = ResultSink.append_keyed

    def append_then_wait(self: ResultSink, batches: Any) -> set[str]:
        done = append(self, batches)
        if len(list(self.dir.glob("part-*.parquet"))) >= int(parts):
            Path(waiting).touch()
            time.sleep(600)
        return done

    ResultSink.append_keyed = append_then_wait  # type: ignore[method-assign]
    where: dict[str, Any] = (
        {"local": True, "max_concurrency": 2} if how == "--local" else {"address": sys.argv[6]}
    )
    run_sweep(load_sweep(spec), Path(out), flush_units=2, progress=False, **where)


if __name__ == "__main__":
    main()
