"""Sweeps: config validation, the pure unit runner, and kill-then-resume exactly-once rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.errors import ConfigError
from raymeta.finetune.strategy import Strategy
from raymeta.orchestration.sweep.config import load_sweep, parse_sweep
from raymeta.orchestration.sweep.run import run_unit
from raymeta.results import read_results

PAUSED = Path(__file__).with_name("_paused_sweep.py")  # a sweep that waits to be killed

STRATEGIES = ["scratch+broad+random", "scratch+broad+pbt", "meta+fixed-default", "meta+broad+pbt"]


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "meta"
    tr = meta_train(MetaTrainConfig(steps=30, meta_batch=8, val_every=30))
    save_meta_checkpoint(out, tr.to_checkpoint())
    return out


def _write(tmp_path: Path, **kw: object) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(kw))
    return p


def test_strategy_parsing() -> None:
    assert Strategy.parse("meta+fixed-default").name == "meta+fixed-default"
    assert Strategy.parse("scratch+broad+pbt").scheduler == "pbt"
    with pytest.raises(ConfigError, match="unknown strategy"):
        Strategy.parse("meta+learned+hyperband")


def test_sweep_config_errors(tmp_path: Path, meta_dir: Path) -> None:
    base = {"meta": [str(meta_dir)], "strategies": STRATEGIES, "tasks": 2}
    assert len(parse_sweep(base).units()) == 8
    with pytest.raises(ConfigError, match="unknown strategy"):
        parse_sweep({**base, "strategies": ["nope"]})
    with pytest.raises(ConfigError, match="does not exist"):
        parse_sweep({**base, "meta": [str(tmp_path / "missing")]})
    with pytest.raises(ConfigError, match="empty"):
        parse_sweep({**base, "tasks": []})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_sweep({**base, "budgett": 3})
    assert parse_sweep({**base, "task_options": {"val_size": 20}}).task_options == {"val_size": 20}
    assert parse_sweep(base).task_options == {}
    for opts, needle in (
        ({"ways": 3}, "task_options key 'ways' cannot be overridden"),
        ({"val_size": 0}, "val_size must be an integer in 1"),
        ("val_size=5", "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_sweep({**base, "task_options": opts})
    # The CLI turns the same problems into one line on stderr and exit 2.
    bad = _write(tmp_path, meta=[str(meta_dir)], strategies=["bogus"], tasks=1)
    proc = subprocess.run(
        [sys.executable, "-m", "raymeta.cli.main", "sweep", str(bad), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown strategy" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_run_unit_rows(meta_dir: Path, tmp_path: Path) -> None:
    cfg_dict = {
        "meta": [str(meta_dir)],
        "strategies": STRATEGIES,
        "tasks": 1,
        "population": 4,
        "steps_per_member": 20,
        "interval": 5,
    }
    cfg = parse_sweep(cfg_dict)
    by_strategy = {}
    for unit in cfg.units():
        rows = run_unit(unit, cfg)
        metrics = {r["metric"] for r in rows}
        assert {"val_loss", "test_loss"} <= metrics
        test = [r for r in rows if r["metric"] == "test_loss"]
        assert len(test) == 1 and test[0]["value"] >= 0
        by_strategy[unit["strategy"]] = rows
    # fixed-default is one member for fixed_steps (10) steps; PBT members spend the full budget.
    fixed = [r for r in by_strategy["meta+fixed-default"] if r["metric"] == "val_loss"]
    assert {r["trial"] for r in fixed} == {"m0"} and max(r["step"] for r in fixed) == 10
    pbt = [r for r in by_strategy["meta+broad+pbt"] if r["metric"] == "val_loss"]
    assert {r["trial"] for r in pbt} == {"m0", "m1", "m2", "m3"}
    # task_options resize the held-out tasks' val split: same members, other val losses
    big = parse_sweep({**cfg_dict, "task_options": {"val_size": 40}})
    unit = next(u for u in big.units() if u["strategy"] == "meta+fixed-default")
    val = [r["value"] for r in run_unit(unit, big) if r["metric"] == "val_loss"]
    assert len(val) == len(fixed) and val != [r["value"] for r in fixed]


def test_killed_batched_sweep_resumes_exactly_once(
    ray_session: None, meta_dir: Path, tmp_path: Path
) -> None:
    """A sweep writing 2 units per part is SIGKILLed mid-sweep; the CLI rerun (default batches)
    finishes it: every published part is whole, no unit is missing and none is duplicated, and
    the dataset reads in one line with pandas and pyarrow."""
    import pandas as pd
    import pyarrow.parquet as pq
    import ray

    from raymeta.results.sink import ResultSink, part_keys

    address = ray.get_runtime_context().gcs_address
    spec = _write(
        tmp_path,
        name="kill",
        meta=[str(meta_dir)],
        strategies=STRATEGIES[:2],
        tasks=6,
        population=4,
        steps_per_member=40,
        interval=10,
    )
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    waiting = tmp_path / "waiting"
    proc = subprocess.Popen(
        [sys.executable, str(PAUSED), str(spec), str(out), str(waiting), "2", "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    parts = out / "sweep=kill"
    deadline = time.time() + 240
    while time.time() < deadline and not waiting.exists() and proc.poll() is None:
        time.sleep(0.2)
    assert waiting.exists(), proc.communicate(timeout=30)[0] if proc.poll() is not None else ""
    os.killpg(proc.pid, signal.SIGKILL)  # a real kill, mid-sweep
    proc.wait(timeout=30)
    published = sorted(parts.glob("part-*.parquet"))
    assert all(len(part_keys(p)) == 2 for p in published)  # whole batches only
    done_before = len(ResultSink(out, "kill").done_keys())
    assert 0 < done_before < 12
    cmd = [sys.executable, "-m", "raymeta.cli.main", "sweep", str(spec), "--out", str(out)]
    rerun = subprocess.run(
        [*cmd, "--address", address], capture_output=True, text=True, env=env, timeout=600
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{done_before} already done" in rerun.stdout
    table = read_results(out, sweep="kill").to_pandas()
    finals = table[table.metric == "test_loss"]
    assert len(finals) == 12  # 2 strategies x 6 tasks x 1 seed, none missing
    assert not finals.duplicated(["strategy", "task", "seed"]).any()
    assert not table.duplicated(["strategy", "task", "seed", "trial", "step", "metric"]).any()
    assert len(list(parts.glob("part-*.parquet"))) == len(published) + 1  # rest: one batch
    assert len(pd.read_parquet(out)) == len(pq.read_table(out)) == len(table)
    assert load_sweep(spec).name == "kill"


def test_same_basename_checkpoints_keep_every_row(
    ray_session: None, meta_dir: Path, tmp_path: Path
) -> None:
    """runs/a/meta and runs/b/meta are two checkpoints, not one: keys and labels carry each
    checkpoint's identity (sha of its meta.json), so both units' rows are kept."""
    import shutil

    from raymeta.orchestration.sweep.run import run_sweep

    a, b = tmp_path / "runs" / "a" / "meta", tmp_path / "runs" / "b" / "meta"
    shutil.copytree(meta_dir, a)
    tr = meta_train(MetaTrainConfig(steps=3, meta_batch=4, val_every=3, seed=1))
    save_meta_checkpoint(b, tr.to_checkpoint())
    base = {"meta": [str(a), str(b)], "strategies": ["meta+fixed-default"], "tasks": 1}
    base |= {"population": 2, "steps_per_member": 10, "interval": 5, "name": "twins"}
    cfg = parse_sweep(base)
    units = cfg.units()
    assert len({u["key"] for u in units}) == 2 and len({u["label"] for u in units}) == 2
    assert all(u["label"].startswith("meta+fixed-default@meta@") for u in units)
    # the same checkpoint twice (same path, or a byte-identical copy) is refused
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    for twice in ([str(a), str(a)], [str(a), str(copy)]):
        with pytest.raises(ConfigError, match="same meta-checkpoint twice"):
            parse_sweep({**base, "meta": twice})
    import ray

    out = tmp_path / "results"
    address = ray.get_runtime_context().gcs_address
    got = run_sweep(cfg, out, address=address, progress=False, flush_s=0.0)
    assert (got["units"], got["ran"]) == (2, 2)
    assert len(list((out / "sweep=twins").glob("part-*.parquet"))) == 2  # flush_s=0: per unit
    table = read_results(out, sweep="twins").to_pandas()
    finals = table[table.metric == "test_loss"]
    assert sorted(finals.strategy) == sorted(u["label"] for u in units)
