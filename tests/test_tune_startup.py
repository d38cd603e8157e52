"""Fixed start-up cost of tune runs: Ray started once per process, no idle prestarted workers.

Why these matter: a process that runs several tune runs (``raymeta bench tune``, the quick
start) must pay Ray's start-up once (``ray_context`` reuses a running Ray and leaves it
running), and the embedded Ray of ``raymeta tune`` starts no idle workers that Tune's trial
actors cannot use (``ray_runtime.local_init_kwargs``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raymeta.orchestration.ray_runtime import LOOPBACK, local_init_kwargs


def test_local_init_kwargs_keep_loopback_and_only_drop_prestart() -> None:
    default, lean = local_init_kwargs(), local_init_kwargs(prestart_workers=False)
    for kw in (default, lean):
        assert kw["_node_ip_address"] == LOOPBACK and kw["include_dashboard"] is False
    assert "_system_config" not in default
    assert lean == {**default, "_system_config": {"prestart_worker_first_driver": False}}


def test_ray_context_reuses_a_running_ray(ray_session: None) -> None:
    import ray

    from raymeta.orchestration.ray_runtime import ray_context

    node = ray.get_runtime_context().get_node_id()
    for _ in range(2):  # two "runs" in one process: the same Ray, still running after each
        with ray_context(None, prestart_workers=False):
            assert ray.get_runtime_context().get_node_id() == node
        assert ray.is_initialized()


_PROBE = textwrap.dedent(
    """
    import sys, time
    import psutil, ray
    from raymeta.orchestration.ray_runtime import ray_context

    def idle():
        n = 0
        for p in psutil.Process().children(recursive=True):
            try:
                n += "ray::IDLE" in " ".join(p.cmdline())
            except psutil.Error:
                pass
        return n

    for prestart in (True, False):
        with ray_context(None, num_cpus=2, prestart_workers=prestart):
            deadline = time.monotonic() + 20
            while idle() < 2 and time.monotonic() < deadline and prestart:
                time.sleep(0.2)
            if not prestart:
                time.sleep(2)
            n = idle()
            ok = ray.get(ray.remote(lambda: 1).remote())  # workers still start on demand
            print(prestart, n, ok, flush=True)
    """
)


@pytest.mark.slow
def test_embedded_ray_without_prestarted_workers(tmp_path: Path) -> None:
    """Two embedded Rays in a fresh process: the default prestarts idle workers (so the flag is
    what removes them), ``prestart_workers=False`` starts none, and tasks still run."""
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line.split() for line in res.stdout.splitlines() if line.startswith(("True", "False"))]
    assert lines[0][0] == "True" and int(lines[0][1]) >= 2 and lines[0][2] == "1", res.stdout
    assert lines[1] == ["False", "0", "1"], res.stdout


def test_tensorboard_logger_does_not_warn_per_infinite_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A diverged member reports an infinite loss at every report; tensorboardX warned "NaN or
    Inf found in input tensor." on the console for each (dozens of lines in one bench run).
    With raymeta's logger callbacks the value is still converted (and written), silently."""
    import logging
    import math

    pytest.importorskip("tensorboardX")
    from ray.tune.logger import TBXLoggerCallback
    from tensorboardX.x2num import make_np

    from raymeta.orchestration.tune._history import logger_callbacks

    cbs = logger_callbacks()
    assert any(isinstance(c, TBXLoggerCallback) for c in cbs)
    with caplog.at_level(logging.WARNING):
        value = make_np(math.inf)
    assert math.isinf(float(value))
    assert not [r for r in caplog.records if "NaN or Inf" in r.getMessage()]
