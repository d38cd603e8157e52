"""Every example runs end to end in its ``--smoke-test`` mode (in a fresh interpreter).

The examples that use Ray join the shared test Ray (the ``ray_session`` fixture) instead of each
starting and stopping an embedded one (~6-8 s apiece here): 02 through its ``--address`` flag,
the others through ``RAY_ADDRESS`` (what ``ray job submit`` sets for its entrypoint), which
raymeta's ``ray_context`` honours. What they demonstrate (Ray Train workers, Tune populations,
sweeps as Ray tasks, a user's module imported by every worker) runs the same on a joined
cluster; starting the embedded Ray itself is covered by test_loopback.py and
test_meta_train_ray.py's ``test_cli_too_many_workers_for_embedded_ray``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# numbered scripts are the examples; other modules there (my_plugin.py) are what they import
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("[0-9]*.py"))
# examples that take the cluster address as a flag (the others read RAY_ADDRESS)
ADDRESS_FLAG = {"02_meta_train_ray.py"}
NO_RAY = {"01_sinusoid_local.py"}  # in-process only: no Ray to join


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ holds no scripts"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_smoke(script: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    argv = [sys.executable, str(script), "--smoke-test"]
    if script.name not in NO_RAY:
        # before the environment is copied: starting Ray sets RAY_AUTH_MODE=token, which a
        # process joining this token-authenticated Ray needs too
        request.getfixturevalue("ray_session")
    env = dict(os.environ, RAYMETA_EXAMPLE_TMP=str(tmp_path))
    if script.name in NO_RAY:
        env.pop("RAY_ADDRESS", None)
    else:
        import ray

        address = ray.get_runtime_context().gcs_address
        if script.name in ADDRESS_FLAG:
            argv += ["--address", address]
            env.pop("RAY_ADDRESS", None)
        else:
            env["RAY_ADDRESS"] = address
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
