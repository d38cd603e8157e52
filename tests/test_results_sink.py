"""Results sink/reader: exactly-once appends, atomicity under a real kill, schema-version checks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymeta.errors import ConfigError, DataError
from raymeta.results import SCHEMA, SCHEMA_VERSION, ResultSink, make_row, read_results
from raymeta.results.sink import part_name


def _rows(sweep: str, strategy: str, task: str, n: int = 3) -> list[dict]:
    return [
        make_row(
            sweep=sweep,
            strategy=strategy,
            task=task,
            seed=0,
            trial="t0",
            step=10 * (i + 1),
            metric="val_loss",
            value=1.0 / (i + 1),
            hparams={"lr": 0.1},
            wall_s=0.5 * i,
        )
        for i in range(n)
    ]


def test_make_row_types_and_canonical_hparams() -> None:
    import numpy as np

    row = make_row(
        sweep="s",
        strategy="a",
        task=3,
        seed=np.int64(2),
        trial=1,
        step=5,
        metric="val_loss",
        value=np.float32(0.25),
        hparams={"steps": np.int64(3), "lr": np.float32(2.0), "optimizer": "sgd"},
        wall_s=1,
    )
    assert (
        row["task"] == "3"
        and row["trial"] == "1"
        and row["seed"] == 2
        and isinstance(row["seed"], int)
    )
    assert row["value"] == 0.25 and row["hparams"] == {"lr": 2.0, "optimizer": "sgd", "steps": 3}
    assert list(row["hparams"]) == ["lr", "optimizer", "steps"]  # the vocabulary's order
    assert isinstance(row["hparams"]["steps"], int) and isinstance(row["hparams"]["lr"], float)
    assert set(row) == set(SCHEMA.names)
    nan_row = make_row(
        sweep="s",
        strategy="a",
        task=3,
        seed=0,
        trial=1,
        step=5,
        metric="val_loss",
        value=float("nan"),
        hparams=None,
        wall_s=0,
    )
    assert math.isnan(nan_row["value"]) and nan_row["hparams"] == {}
    base = dict(sweep="s", strategy="a", task=3, seed=0, trial=1, step=5, metric="m", wall_s=0)
    assert make_row(**base, value=1, hparams='{"lr": 1}')["hparams"] == {"lr": 1.0}  # schema 1
    for bad, needle in (
        ({"momentum": 0.9}, "unknown hyperparameter.*'momentum'"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"optimizer": 1}, "optimizer=1"),
        ({"lr": True}, "lr=True"),
    ):
        with pytest.raises(ConfigError, match=needle):
            make_row(**base, value=1, hparams=bad)
    with pytest.raises(ConfigError):
        make_row(
            sweep="s",
            strategy="a",
            task=3,
            seed=0,
            trial=1,
            step=5,
            metric="val_loss",
            value=1,
            hparams="{oops",
            wall_s=0,
        )
    with pytest.raises(ConfigError):
        make_row(
            sweep="s",
            strategy="a",
            task=3,
            seed=0,
            trial=1,
            step=5,
            metric="val_loss",
            value=1,
            hparams={},
            wall_s=-1,
        )


def test_append_is_idempotent_and_roundtrips(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, "s1")
    a, b = _rows("s1", "meta", "t1"), _rows("s1", "scratch", "t1", n=2)
    assert sink.append(a, key="meta/t1/0") is True
    assert sink.append(a, key="meta/t1/0") is False  # re-run after a kill: skipped
    assert sink.append(b, key="scratch/t1/0") is True
    assert sink.append([], key="empty/t1/0") is True  # marks a key done with no rows
    assert sink.done_keys() == {"meta/t1/0", "scratch/t1/0", "empty/t1/0"}
    # a second sink on the same dataset (a re-run process) sees the same keys
    again = ResultSink(tmp_path, "s1")
    assert again.done_keys() == sink.done_keys()
    assert again.append(b, key="scratch/t1/0") is False
    table = read_results(tmp_path)
    assert table.num_rows == 5 and table.schema.equals(SCHEMA, check_metadata=False)
    got = sorted(
        zip(
            table["strategy"].to_pylist(),
            table["step"].to_pylist(),
            table["value"].to_pylist(),
            strict=True,
        )
    )
    want = sorted((r["strategy"], r["step"], r["value"]) for r in a + b)
    assert got == want
    meta = json.loads((tmp_path / "_schema.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION


def test_sweeps_are_partitions(tmp_path: Path) -> None:
    ResultSink(tmp_path, "s1").append(_rows("s1", "a", "t"), key="k")
    ResultSink(tmp_path, "s2").append(_rows("s2", "a", "t", n=1), key="k")
    assert (tmp_path / "sweep=s1").is_dir() and (tmp_path / "sweep=s2").is_dir()
    assert read_results(tmp_path).num_rows == 4
    assert set(read_results(tmp_path, sweep="s2")["sweep"].to_pylist()) == {"s2"}
    with pytest.raises(DataError, match="not found"):
        read_results(tmp_path, sweep="nope")


def test_rows_are_validated(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, "s1")
    with pytest.raises(ConfigError, match="sweep"):
        sink.append(_rows("other", "a", "t"), key="k")
    bad = dict(_rows("s1", "a", "t")[0])
    bad["seed"] = None
    with pytest.raises(ConfigError, match="seed"):
        sink.append([bad], key="k")
    del bad["seed"]
    with pytest.raises(ConfigError, match="missing"):
        sink.append([bad], key="k")
    with pytest.raises(ConfigError):
        ResultSink(tmp_path, "../escape")
    assert sink.done_keys() == set()
    assert (
        list(tmp_path.iterdir()) == []
    )  # refused appends create no dataset, not even _schema.json


def test_reader_ignores_leftover_temp_file(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, "s1")
    sink.append(_rows("s1", "a", "t"), key="k")
    # what a kill between write and publish leaves behind: a hidden, possibly truncated temp file
    (sink.dir / f".{part_name('k2')}.abc123.tmp").write_bytes(b"PAR1 truncated")
    assert read_results(tmp_path).num_rows == 3
    assert sink.done_keys() == {"k"}
    assert sink.append(_rows("s1", "a", "t2"), key="k2") is True
    assert read_results(tmp_path).num_rows == 6


_WRITER = textwrap.dedent(
    """
    import sys, time
    from raymeta.results import ResultSink, make_row
    root, stop = sys.argv[1], int(sys.argv[2])
    sink = ResultSink(root, "kill")
    done = sink.done_keys()
    for i in range(stop):
        key = f"unit-{i}"
        if key in done:
            continue
        rows = [make_row(sweep="kill", strategy="a", task=str(i), seed=0, trial=str(j), step=j,
                         metric="val_loss", value=float(j), hparams={}, wall_s=0.0) for j in range(50)]
        sink.append(rows, key=key)
        print(i, flush=True)
    """
)


def test_killed_writer_leaves_only_whole_parts_and_rerun_completes(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    root = tmp_path / "res"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), "100000"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = 0
    deadline = time.time() + 60
    while (
        seen < 15 and time.time() < deadline
    ):  # let it publish some parts, then kill it mid-flight
        if proc.stdout.readline():
            seen += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen >= 15
    table = read_results(root)
    assert table.num_rows % 50 == 0 and table.num_rows >= 15 * 50
    for part in (root / "sweep=kill").glob("part-*.parquet"):
        assert pq.read_table(part).num_rows == 50  # every visible part is whole
    keys_before = ResultSink(root, "kill").done_keys()
    stop = len(keys_before) + 5
    # the re-run of the same command finishes units 0..stop-1 without redoing a published one
    rerun = subprocess.run(
        [sys.executable, str(script), str(root), str(stop)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    redone = {f"unit-{x}" for x in rerun.stdout.split()}
    assert redone and not redone & keys_before
    tasks = read_results(root)["task"].to_pylist()
    assert sorted(set(tasks), key=int) == [str(i) for i in range(stop)]  # nothing missing
    assert all(tasks.count(t) == 50 for t in set(tasks))  # nothing duplicated


def test_not_a_dataset_and_incompatible_version(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_results(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a raymeta results dataset"):
        read_results(tmp_path / "plain")
    old = tmp_path / "old"
    old.mkdir()
    (old / "_schema.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(DataError, match="schema version"):
        read_results(old)
    with pytest.raises(DataError, match="schema version"):
        ResultSink(old, "s")  # appending to a foreign dataset is refused too
    # a part written by another version inside a current dataset
    cur = tmp_path / "cur"
    sink = ResultSink(cur, "s")
    sink.append([], key="empty")  # creates the dataset
    table = pa.Table.from_pylist(_rows("s", "a", "t"), schema=SCHEMA).replace_schema_metadata(
        {b"raymeta.results.schema_version": b"99"}
    )
    pq.write_table(table, sink.dir / "part-foreign.parquet")
    with pytest.raises(DataError, match="schema version 99"):
        read_results(cur)
    narrow = pa.table({"value": [1.0]}).replace_schema_metadata(
        {b"raymeta.results.schema_version": str(SCHEMA_VERSION).encode()}
    )
    pq.write_table(narrow, sink.dir / "part-foreign.parquet")
    with pytest.raises(DataError, match="does not have the results columns"):
        read_results(cur)
    (sink.dir / "part-foreign.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable"):
        read_results(cur)
