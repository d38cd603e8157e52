"""The README's main job, end to end at smoke size: meta-train on Ray Train, fit priors, tune
held-out tasks warm-started and from scratch, and print the comparison table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint


def test_quickstart_smoke(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    out = tmp_path / "qs"
    cmd = [
        sys.executable,
        "-m",
        "raymeta.cli.main",
        "quickstart",
        "--smoke-test",
        "--out",
        str(out),
        "--address",
        address,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "meta+learned+pbt" in proc.stdout and "scratch+broad+pbt" in proc.stdout
    assert "quickstart finished" in proc.stdout
    # the hint's 'raymeta report' reproduces the comparison table quickstart printed
    hint = next(ln for ln in proc.stdout.splitlines() if ln.startswith("next: "))
    argv = hint.split("; ")[1].split()
    assert argv[:3] == ["raymeta", "report", str(out / "tune")]
    assert main(argv[1:]) == 0
    printed = proc.stdout.split("\n== 4/4")[1].split("\n", 1)[1]
    assert capsys.readouterr().out.strip() == printed.split("\nquickstart finished")[0].strip()
    assert list((out / "plots").glob("*.png"))
    ckpt = load_meta_checkpoint(out / "meta")
    assert ckpt.priors is not None
    for run in ("task0-meta-learned", "task0-scratch-broad"):
        report = json.loads((out / "tune" / run / "report.json").read_text())
        assert report["best"]["test_loss"] >= 0
    # Every stage is resumable: a rerun reuses the finished artifacts. In this process, on the
    # test Ray it already holds (the fresh-interpreter path is the run above).
    assert main(cmd[3:]) == 0
    assert "reusing" in capsys.readouterr().out
