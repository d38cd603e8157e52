"""Flags that were silently ignored or wrote among an artifact's files:

* ``raymeta meta-train --local``: Ray Train's own flags are one line instead of being
  ignored, and ``--workers W`` keeps giving the W shards a W-worker Ray Train run draws (the
  epilog's promise, which the refusal must not break);
* a benchmark's JSON ``--out`` inside a meta-checkpoint is refused like every other
  command's ``--out``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train

ARGS = ["--steps", "3", "--meta-batch", "4", "--val-tasks", "2", "--val-every", "3", "--quiet"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = load_meta_checkpoint(out)
    (cand,) = ckpt.candidates.values()
    return cand.params


@pytest.mark.parametrize("workers", [1, 2])
def test_local_workers_are_the_shards_of_the_in_process_run(tmp_path: Path, workers: int) -> None:
    """The CLI's --local run equals ``meta_train`` with ``shards=W`` (an independent call of
    the in-process trainer), and records ``shards`` in its config."""
    out = tmp_path / "m"
    rc = main(["meta-train", "--local", "--workers", str(workers), *ARGS, "--out", str(out)])
    assert rc == 0
    ref = meta_train(
        MetaTrainConfig(steps=3, meta_batch=4, val_tasks=2, val_every=3, shards=workers)
    ).to_checkpoint()
    (want,) = ref.candidates.values()
    got = _weights(out)
    expected = want.params
    assert set(got) == set(expected)
    for k in got:
        assert torch.equal(got[k], expected[k]), k
    assert load_meta_checkpoint(out).config["shards"] == workers


def test_two_shards_draw_other_tasks_than_one(tmp_path: Path) -> None:
    """So the flag matters: one and two shards end at different weights."""
    a = meta_train(MetaTrainConfig(steps=3, meta_batch=4, val_tasks=2, val_every=3, shards=1))
    b = meta_train(MetaTrainConfig(steps=3, meta_batch=4, val_tasks=2, val_every=3, shards=2))
    wa = next(iter(a.to_checkpoint().candidates.values())).params
    wb = next(iter(b.to_checkpoint().candidates.values())).params
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--storage", "runs/state"),
        ("--checkpoint-every", "5"),
        ("--max-failures", "0"),
        ("--cpus-per-worker", "2"),
        ("--gpus-per-worker", "1"),
    ],
)
def test_ray_train_flags_with_local_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    line = run_bad(["meta-train", "--local", *ARGS, "--out", "m", flag, value], tmp_path, capsys)
    assert flag in line and "--local" in line


def test_ray_train_flags_from_config_with_local_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("local: true\nmax_failures: 0\n")
    line = run_bad(["meta-train", *ARGS, "--out", "m", "--config", "c.yaml"], tmp_path, capsys)
    assert "--max-failures" in line


# --------------------------------------------------------------------------- bench --out JSON
def test_bench_json_out_inside_a_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ckpt_dir: Path
) -> None:
    """A benchmark's JSON ``--out`` inside a meta-checkpoint is refused before the benchmark
    runs, as every other command's ``--out`` is (it was written among the checkpoint's files,
    or over one of them); the checkpoint is untouched."""
    before = sorted(p.name for p in ckpt_dir.iterdir())
    for target in (ckpt_dir / "bench.json", ckpt_dir / "meta.json"):
        line = run_bad(["bench", "engine", "--smoke-test", "--out", str(target)], tmp_path, capsys)
        assert "inside the meta-checkpoint" in line
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before


def test_bench_json_out_beside_a_checkpoint_is_taken(tmp_path: Path, ckpt_dir: Path) -> None:
    """The check is about the path, not its neighbourhood: a file beside the checkpoint is a
    plain output (checked without running a benchmark)."""
    import argparse

    from raymeta.bench.args import add_json_out, check_json_out

    p = argparse.ArgumentParser()
    add_json_out(p, "records")
    args = p.parse_args(["--out", str(ckpt_dir.parent / "bench.json")])
    check_json_out(p, args)  # no error
