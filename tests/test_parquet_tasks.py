"""Parquet task sets: schema validation, streaming index and reads, one-task files, writing, CLI."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymeta.cli.main import main
from raymeta.errors import ConfigError, DataError
from raymeta.tasks import Task, make_family
from raymeta.tasks.parquet import (
    ParquetFamily,
    load_task_file,
    meta_split_of,
    scan_tasks,
    write_tasks,
)
from raymeta.tasks.sinusoid import Sinusoid


def _table(
    rows: list[tuple[str, str, list[float], Any]],
    width: int | None = None,
    target: pa.DataType = pa.float32(),
    **extra: list[Any],
) -> pa.Table:
    """A raw table (bypassing write_tasks) so tests can build every kind of broken file."""
    feats = [r[2] for r in rows]
    ftype = pa.list_(pa.float32(), width) if width is not None else pa.list_(pa.float32())
    cols = {
        "task_id": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "features": pa.array(feats, ftype),
        "target": pa.array([r[3] for r in rows], target),
    }
    cols.update({k: pa.array(v) for k, v in extra.items()})
    return pa.table(cols)


def _good_rows(
    task: str = "a", n: int = 3, width: int = 2
) -> list[tuple[str, str, list[float], Any]]:
    return [
        (task, s, [float(i)] * width, float(i)) for s in ("train", "val", "test") for i in range(n)
    ]


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------- schema validation


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _table(_good_rows(), 2).drop_columns(["target"]), "missing column\\(s\\) target"),
        (
            lambda: _table(_good_rows(), 2).drop_columns(["task_id", "split"]),
            "missing column\\(s\\) task_id, split",
        ),
        (
            lambda: _table(_good_rows(), 2).set_column(0, "task_id", pa.array([1] * 9)),
            "'task_id' must be string, got int64",
        ),
        (
            lambda: _table(_good_rows(), 2).set_column(3, "target", pa.array(["x"] * 9)),
            "'target' must be float",
        ),
        (
            lambda: _table(_good_rows(), 2).set_column(2, "features", pa.array([1.0] * 9)),
            "'features' must be fixed_size_list",
        ),
        (
            lambda: _table([*_good_rows()[:-1], ("a", "test", [1.0, float("nan")], 1.0)], 2),
            "'features' holds non-finite values \\(task 'a'\\)",
        ),
        (
            lambda: _table([*_good_rows()[:-1], ("a", "test", [1.0, float("inf")], 1.0)], 2),
            "non-finite",
        ),
        (
            lambda: _table([*_good_rows()[:-1], ("a", "test", [1.0, 2.0], float("nan"))], 2),
            "'target' holds non-finite values \\(task 'a'\\)",
        ),
        (
            lambda: _table([*_good_rows()[:-1], ("a", "test", [1.0], 1.0)]),
            "rows of width 1, expected 2 \\(task 'a'\\)",
        ),
        (
            lambda: _table([*_good_rows()[:-1], ("a", "holdout", [1.0, 2.0], 1.0)], 2),
            "unknown value 'holdout' \\(task 'a'\\)",
        ),
        (lambda: _table([r for r in _good_rows() if r[1] != "val"], 2), "task 'a' has no val rows"),
        (
            lambda: _table(_good_rows(), 2, meta_split=["train"] * 8 + ["test"]),
            "task 'a' has rows in meta-splits",
        ),
        (
            lambda: _table(_good_rows(), 2, meta_split=["dev"] * 9),
            "'meta_split' has unknown value 'dev'",
        ),
        (
            lambda: _table(_good_rows(), 2).set_column(3, "target", pa.array([-1] * 9, pa.int64())),
            "classification targets must be class ids 0..9999",
        ),
    ],
)
def test_bad_task_sets_are_one_line_data_errors(tmp_path: Path, make: Any, match: str) -> None:
    path = _write(tmp_path / "bad.parquet", make())
    with pytest.raises(DataError, match=match) as exc:
        scan_tasks(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_mismatched_widths_across_files(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", _table(_good_rows("a", width=2), 2))
    _write(tmp_path / "b.parquet", _table(_good_rows("b", width=3), 3))
    with pytest.raises(DataError, match="b.parquet: features have width 3 but .*a.parquet has 2"):
        scan_tasks(tmp_path)


def test_missing_path_and_non_parquet(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ParquetFamily(str(tmp_path / "nope"))
    (tmp_path / "x.parquet").write_text("hello")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        ParquetFamily(str(tmp_path / "x.parquet"))
    with pytest.raises(ConfigError, match="option path must name"):
        make_family("parquet")
    with pytest.raises(ConfigError, match="replace must be true or false"):
        make_family("parquet", path=str(tmp_path), replace="yes")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        ParquetFamily(str(tmp_path / "sub"))


def test_non_finite_features_found_lazily_without_full_check(tmp_path: Path) -> None:
    rows = _good_rows("a") + _good_rows("b")
    rows[-1] = ("b", "test", [float("nan"), 0.0], 0.0)
    path = _write(tmp_path / "t.parquet", _table(rows, 2, meta_split=["train"] * 18))
    fam = ParquetFamily(str(path), shots=2, queries=2, full_check=False)  # features not scanned
    assert fam.rows("a")["train"][0].shape == (3, 2)
    with pytest.raises(DataError, match="non-finite values \\(task 'b'\\)"):
        fam.rows("b")


# ---------------------------------------------------------------- streaming family


def _sin_tasks(n: int, split: str = "train", sizes: tuple[int, int, int] = (8, 6, 4)) -> list[Task]:
    fam = Sinusoid(task_shots=sizes[0], val_size=sizes[1], test_size=sizes[2])
    return [fam.task(split, i) for i in range(n)]  # type: ignore[arg-type]


def test_directory_of_files_streams_tasks_with_exact_rows(tmp_path: Path) -> None:
    tasks = _sin_tasks(12)
    write_tasks(tmp_path / "d" / "part-0.parquet", tasks[:6], meta_split="train")
    write_tasks(
        tmp_path / "d" / "part-1.parquet", tasks[6:10], meta_split=["train", "val", "test", "train"]
    )
    write_tasks(tmp_path / "d" / "part-2.parquet", tasks[10:], meta_split=["val", "test"])
    fam = ParquetFamily(str(tmp_path / "d"), shots=5, queries=6, cache_tasks=2)
    assert [fam.n_tasks(s) for s in ("train", "val", "test")] == [8, 2, 2]
    assert len(fam.index.files) == 3
    by_id = {t.task_id: t for t in tasks}
    for split in ("train", "val", "test"):
        for i in range(fam.n_tasks(split)):  # type: ignore[arg-type]
            t = fam.task(split, i)  # type: ignore[arg-type]
            ref = by_id[t.task_id]
            for a, b in (
                (t.x_train, ref.x_train),
                (t.y_val, ref.y_val),
                (t.x_test, ref.x_test),
                (t.y_test, ref.y_test),
            ):
                assert torch.equal(a, b)
            assert len(fam._cache) <= 2  # the LRU cache stays bounded
    b = fam.sample("train", 20, torch.Generator().manual_seed(0))
    assert b.xs.shape == (20, 5, 1) and b.xq.shape == (20, 6, 1)
    # the family travels to Ray workers by pickle and samples identically there
    clone = pickle.loads(pickle.dumps(fam))
    again = clone.sample("train", 20, torch.Generator().manual_seed(0))
    assert torch.equal(again.xs, b.xs) and torch.equal(again.yq, b.yq)
    # every support row really belongs to its task: y = A sin(x - phi) for the task's (A, phi)
    train_ids = (
        {t.task_id for t in tasks}
        - {fam.task("val", i).task_id for i in range(2)}
        - {fam.task("test", i).task_id for i in range(2)}
    )
    refs = [by_id[t] for t in train_ids]
    for i in range(b.n_tasks):
        assert any(
            _rows_subset(b.xs[i], b.ys[i], r.x_train, r.y_train)
            and _rows_subset(b.xq[i], b.yq[i], r.x_val, r.y_val)
            for r in refs
        )


def _rows_subset(x: torch.Tensor, y: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> bool:
    pool = {(float(a), float(b)) for a, b in zip(X.view(-1), Y.view(-1), strict=True)}
    pairs = [(float(a), float(b)) for a, b in zip(x.view(-1), y.view(-1), strict=True)]
    return all(p in pool for p in pairs) and len(set(pairs)) == len(pairs)  # no replacement


def test_too_few_rows_needs_replace(tmp_path: Path) -> None:
    write_tasks(tmp_path / "s.parquet", _sin_tasks(4, sizes=(3, 3, 3)), meta_split="train")
    with pytest.raises(ConfigError, match="has 3 train rows, fewer than shots=5"):
        ParquetFamily(str(tmp_path / "s.parquet"), shots=5, queries=2)
    fam = ParquetFamily(str(tmp_path / "s.parquet"), shots=5, queries=2, replace=True)
    assert fam.sample("train", 3, torch.Generator().manual_seed(0)).xs.shape == (3, 5, 1)
    with pytest.raises(DataError, match="no tasks in meta-split 'val'"):
        fam.sample("val", 1, torch.Generator())
    with pytest.raises(ConfigError, match="out of range"):
        fam.task("train", 4)


def test_classification_task_set(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for i in range(6):
        x = torch.randn(30, 4, generator=g)
        y = torch.arange(30) % 3
        tasks.append(
            Task(
                f"c{i}",
                x[:12],
                y[:12],
                x[12:21],
                y[12:21],
                x[21:],
                y[21:],
                kind="classification",
                output_dim=3,
            )
        )
    write_tasks(tmp_path / "c.parquet", tasks, meta_split="train")
    assert pq.read_schema(tmp_path / "c.parquet").field("target").type == pa.int64()
    fam = ParquetFamily(str(tmp_path / "c.parquet"), shots=6, queries=9)
    assert fam.kind == "classification" and fam.output_dim == 3 and fam.input_shape == (4,)
    b = fam.sample("train", 4, g)
    assert b.ys.dtype == torch.int64 and b.ys.shape == (4, 6) and int(b.ys.max()) <= 2
    assert (
        ParquetFamily(str(tmp_path / "c.parquet"), shots=6, queries=9, n_classes=5).output_dim == 5
    )
    with pytest.raises(ConfigError, match="n_classes=2"):
        ParquetFamily(str(tmp_path / "c.parquet"), n_classes=2)


def test_meta_split_hash_is_stable_and_80_10_10() -> None:
    assert [meta_split_of(f"task-{i}") for i in range(5)] == [
        meta_split_of(f"task-{i}") for i in range(5)
    ]
    import hashlib

    expect = int.from_bytes(hashlib.sha256(b"customer-42").digest()[:8], "big") % 10
    assert meta_split_of("customer-42") == (
        "train" if expect < 8 else "val" if expect == 8 else "test"
    )
    share = Counter(meta_split_of(f"t{i}") for i in range(20000))
    assert abs(share["train"] / 20000 - 0.8) < 0.02 and abs(share["val"] / 20000 - 0.1) < 0.01


# ---------------------------------------------------------------- one-task files


def test_one_task_file_with_carved_val(tmp_path: Path) -> None:
    rows = [("t", "train", [float(i), 1.0], float(i)) for i in range(10)] + [
        ("t", "test", [9.0, 9.0], 9.0)
    ] * 2
    path = _write(tmp_path / "one.parquet", _table(rows, 2))
    t = load_task_file(path)
    again = load_task_file(path)
    assert t.task_id == "t" and t.kind == "regression" and t.output_dim == 1
    assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (8, 2, 2)
    assert torch.equal(t.x_val, again.x_val) and "carved 2 of 10 train rows" in t.notes[0]
    seen = sorted(float(v) for v in torch.cat([t.y_train, t.y_val]).view(-1))
    assert seen == [float(i) for i in range(10)]  # a partition of the original train rows
    assert torch.equal(t.x_val[:, 0], t.y_val.view(-1))  # rows stay intact


def test_one_task_file_errors(tmp_path: Path) -> None:
    def bad(rows: list[tuple[str, str, list[float], Any]], match: str, **kw: Any) -> None:
        path = _write(tmp_path / "b.parquet", _table(rows, 1, **kw))
        with pytest.raises(DataError, match=match):
            load_task_file(path)

    bad([("t", "train", [1.0], 1.0)] * 3, "no 'test' rows")
    bad([("t", "test", [1.0], 1.0)] * 3, "no 'train' rows")
    bad([("t", "train", [1.0], 1.0), ("t", "test", [1.0], 1.0)], "too few 'train' rows")
    bad([("t", "train", [1.0], float("nan")), ("t", "test", [1.0], 1.0)], "non-finite")
    bad([("t", "train", [1.0], 1.0), ("u", "test", [1.0], 1.0)], "holds 2 tasks")
    with pytest.raises(DataError, match="does not exist"):
        load_task_file(tmp_path / "nope.parquet")
    # task_id is optional in a one-task file: the file name stands in
    path = _write(tmp_path / "plain.parquet", _table(_good_rows(), 2).drop_columns(["task_id"]))
    assert load_task_file(path).task_id == "plain"


# ---------------------------------------------------------------- writing


def test_write_tasks_round_trip_and_atomicity(tmp_path: Path) -> None:
    tasks = _sin_tasks(3)
    out = tmp_path / "w.parquet"
    write_tasks(out, tasks)
    fam = ParquetFamily(str(out), shots=2, queries=2)
    got = {
        fam.task(s, i).task_id: fam.task(s, i)
        for s in ("train", "val", "test")
        for i in range(fam.n_tasks(s))
    }  # type: ignore[arg-type]
    for t in tasks:
        assert torch.equal(got[t.task_id].x_train, t.x_train) and torch.equal(
            got[t.task_id].y_test, t.y_test
        )
    bad = Task(
        "z",
        torch.zeros(2, 3),
        torch.zeros(2, 1),
        torch.zeros(1, 3),
        torch.zeros(1, 1),
        torch.zeros(1, 3),
        torch.zeros(1, 1),
        "regression",
        1,
    )
    before = out.read_bytes()
    with pytest.raises(DataError, match="differs in kind or feature width"):
        write_tasks(out, [*tasks, bad])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.parquet"]  # no temp files left behind
    with pytest.raises(DataError, match="meta_split"):
        write_tasks(tmp_path / "m.parquet", tasks, meta_split="dev")
    assert not (tmp_path / "m.parquet").exists()


# ---------------------------------------------------------------- CLI


def test_cli_make_sinusoid_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.parquet"
    assert main(["data", "make-sinusoid", str(out), "--tasks", "20", "--train-size", "12"]) == 0
    assert main(["data", "validate", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "tasks per meta-split: train 16, val 2, test 2" in text
        and "feature width: 1" in text
        and "regression" in text
    )
    fam = ParquetFamily(str(out), shots=10, queries=10)
    amps = [float(fam.task("train", i).y_test.abs().max()) for i in range(3)]
    assert all(0.05 < a <= 5.0 for a in amps)
    assert main(["data", "make-sinusoid", str(out), "--tasks", "20"]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err


def test_cli_validate_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path / "bad.parquet",
        _table([*_good_rows()[:-1], ("a", "test", [1.0, float("nan")], 1.0)], 2),
    )
    assert main(["data", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raymeta: error: ") and err.count("\n") == 1 and "non-finite" in err
    assert main(["data", "validate", str(tmp_path / "missing.parquet"), "--one-task"]) == 2
    assert "does not exist" in capsys.readouterr().err
    rows = [("t", "train", [float(i)], float(i)) for i in range(5)] + [("t", "test", [0.0], 0.0)]
    one = _write(tmp_path / "one.parquet", _table(rows, 1))
    assert main(["data", "validate", str(one), "--one-task"]) == 0
    assert "carved 1 of 5 train rows" in capsys.readouterr().out
    np.testing.assert_equal(load_task_file(one).x_test.numpy(), np.zeros((1, 1), np.float32))


def test_interleaved_tasks_across_small_row_groups(tmp_path: Path) -> None:
    """Rows of a task scattered over many row groups (stats cannot prune) still read exactly."""
    rows = []
    for i in range(12):  # a and b alternate row by row
        for t in ("a", "b"):
            split = ("train", "val", "test")[i % 3]
            rows.append(
                (
                    t,
                    split,
                    [float(i), 1.0 if t == "a" else 2.0],
                    float(i) + (0.0 if t == "a" else 100.0),
                )
            )
    path = tmp_path / "mixed.parquet"
    pq.write_table(_table(rows, 2, meta_split=["train"] * len(rows)), path, row_group_size=5)
    fam = ParquetFamily(str(path), shots=2, queries=2, cache_tasks=1)
    assert len(fam.index.where["a"]) == 5 and pq.ParquetFile(path).metadata.num_row_groups == 5
    for t, off, tag in (("a", 0.0, 1.0), ("b", 100.0, 2.0)):
        r = fam.rows(t)
        assert sum(len(r[s][0]) for s in ("train", "val", "test")) == 12
        for s in ("train", "val", "test"):
            x, y = r[s]
            assert bool((x[:, 1] == tag).all()) and torch.equal(y.view(-1), x[:, 0] + off)
