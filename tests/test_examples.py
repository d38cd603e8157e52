"""Every example runs end to end in its ``--smoke-test`` mode (in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# numbered scripts are the examples; other modules there (my_plugin.py) are what they import
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("[0-9]*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ holds no scripts"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_smoke(script: Path, tmp_path: Path) -> None:
    env = dict(os.environ, RAYMETA_EXAMPLE_TMP=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke-test"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
