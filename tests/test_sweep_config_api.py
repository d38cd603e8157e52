"""``raymeta.sweep`` checks a ``SweepConfig`` built by hand as a sweep file is checked
(``parse_sweep(cfg.to_dict())``) before the lock, Ray or any file: a bad field is one
``ConfigError``, a relative meta path is made absolute (Ray workers resolve paths elsewhere)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.errors import ConfigError
from raymeta.orchestration.sweep.config import SweepConfig, parse_sweep
from raymeta.orchestration.sweep.run import run_sweep
from raymeta.results import read_results


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cfgapi") / "meta"
    save_meta_checkpoint(out, meta_train(MetaTrainConfig(steps=4, meta_batch=4)).to_checkpoint())
    return out


def _cfg(meta: Path) -> SweepConfig:
    return parse_sweep(
        {
            "name": "api",
            "meta": [str(meta)],
            "strategies": ["meta+fixed-default"],
            "tasks": 2,
            "population": 2,
            "steps_per_member": 4,
            "interval": 2,
        }
    )


def test_a_parsed_config_round_trips(meta_dir: Path) -> None:
    cfg = _cfg(meta_dir)
    assert parse_sweep(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("population", 0, "population"),
        ("steps_per_member", -3, "steps_per_member"),
        ("interval", "2", "interval"),
        ("tasks", (), "tasks"),
        ("strategies", ("meta+fixed-default+pbt",), "scheduler"),
        ("seeds", (-1,), "seed"),
        ("task_options", {"val_size": 0}, "val_size"),
        ("name", "a/b", "name"),
    ],
)
def test_a_hand_built_config_is_refused_before_any_work(
    meta_dir: Path, tmp_path: Path, field: str, value: Any, needle: str
) -> None:
    bad = dataclasses.replace(_cfg(meta_dir), **{field: value})
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=needle):
        run_sweep(bad, out, local=True, progress=False)
    assert not out.exists()  # refused before the lock or any part


def test_a_relative_meta_path_is_made_absolute(
    meta_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(meta_dir.parent)
    cfg = dataclasses.replace(_cfg(meta_dir), meta=(Path(meta_dir.name),))
    assert not cfg.meta[0].is_absolute()
    out = tmp_path / "out"
    res = run_sweep(cfg, out, local=True, progress=False, max_concurrency=1)
    assert res["ran"] == 2
    assert len(set(read_results(out)["task"].to_pylist())) == 2
    assert os.path.isabs(str(parse_sweep(cfg.to_dict()).meta[0]))
