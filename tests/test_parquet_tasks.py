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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymeta.cli.main import main
from raymeta.errors import ConfigError, DataError
from raymeta.tasks import Task, make_family
from raymeta.tasks.parquet import (
    SHAPE_KEY,
    ParquetFamily,
    convert_table,
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
    fam = ParquetFamily(str(tmp_path / "c.parquet"), shots=2, queries=3)
    assert fam.kind == "classification" and fam.output_dim == 3 and fam.input_shape == (4,)
    b = fam.sample("train", 4, g)  # 3-way 2-shot, 3 queries per class
    assert b.ys.dtype == torch.int64 and b.ys.shape == (4, 6) and int(b.ys.max()) <= 2
    assert (
        ParquetFamily(str(tmp_path / "c.parquet"), shots=2, queries=3, n_classes=5).output_dim == 5
    )
    with pytest.raises(ConfigError, match="has 4 train rows of class 0, fewer than shots=6"):
        ParquetFamily(str(tmp_path / "c.parquet"), shots=6, queries=3)
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
    with pytest.raises(DataError, match="differs in kind or feature shape"):
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


# ---------------------------------------------------------------- shaped features (images)


def _digit_tasks(n: int = 10) -> list[Task]:
    from raymeta.tasks.digits import Digits

    d = Digits(ways=5, shots=1, queries=1, task_shots=2, val_size=2, test_size=2)
    return [d.task("train", i) for i in range(n)]


def test_images_keep_their_shape_and_a_cnn_meta_trains_on_them(tmp_path: Path) -> None:
    from raymeta.core.train import MetaTrainConfig, meta_train

    tasks = _digit_tasks()
    path = tmp_path / "digits.parquet"
    write_tasks(path, tasks, meta_split=["train"] * 8 + ["val", "test"])
    assert pq.read_schema(path).metadata[SHAPE_KEY] == b"[1, 8, 8]"
    fam = ParquetFamily(str(path), shots=2, queries=2)
    assert fam.input_shape == (1, 8, 8) and fam.ways == 5 and fam.default_model() == "conv4"
    b = fam.sample("train", 3, torch.Generator().manual_seed(0))
    assert b.xs.shape == (3, 10, 1, 8, 8) and b.xq.shape == (3, 10, 1, 8, 8)
    t = fam.task("test", 0)
    assert t.x_train.shape[1:] == (1, 8, 8) and torch.equal(t.x_test, tasks[-1].x_test)
    assert fam.sample("train", 0, torch.Generator()).xs.shape == (0, 10, 1, 8, 8)
    one = tmp_path / "one.parquet"
    write_tasks(one, tasks[:1])
    assert load_task_file(one).input_shape == (1, 8, 8)
    opts = {"path": str(path), "shots": 1, "queries": 1}
    cfg = MetaTrainConfig(
        family="parquet",
        family_options=opts,
        model="conv4",
        model_options={"hidden": 16},
        steps=2,
        meta_batch=2,
        val_tasks=1,
    )
    tr = meta_train(cfg)
    assert tr.to_checkpoint().candidate().spec.input_shape == (1, 8, 8)


def test_shape_option_declares_flat_features_and_mismatches_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = []
    for t in _digit_tasks(4):
        parts = []
        for s in ("train", "val", "test"):
            x = getattr(t, f"x_{s}")
            parts += [x.reshape(len(x), -1), getattr(t, f"y_{s}")]
        flat.append(Task(t.task_id, *parts, kind=t.kind, output_dim=t.output_dim))
    path = tmp_path / "flat.parquet"
    write_tasks(path, flat, meta_split="train")
    assert pq.read_schema(path).metadata is None or SHAPE_KEY not in pq.read_schema(path).metadata
    assert ParquetFamily(str(path), shots=1, queries=1).input_shape == (64,)
    fam = ParquetFamily(str(path), shots=1, queries=1, shape="1x8x8")
    assert fam.input_shape == (1, 8, 8) and fam.options()["shape"] == [1, 8, 8]
    assert make_family("parquet", **fam.options()).input_shape == (1, 8, 8)  # round trip
    with pytest.raises(
        ConfigError, match="feature shape 3x3 holds 9 values but the features have width 64"
    ):
        ParquetFamily(str(path), shots=1, queries=1, shape=[3, 3])
    with pytest.raises(ConfigError, match="feature shape must be"):
        ParquetFamily(str(path), shots=1, queries=1, shape="1x-8")
    bad = pq.read_table(path)
    bad = bad.replace_schema_metadata({SHAPE_KEY: b"[2, 8, 8]"})
    pq.write_table(bad, tmp_path / "bad.parquet")
    assert main(["data", "validate", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "feature shape 2x8x8 holds 128 values but the features have width 64" in err
    )


# ---------------------------------------------------------------- N-way K-shot, options


def _unbalanced(tmp_path: Path) -> Path:
    """Classification tasks whose classes have very different row counts (class 0 dominates)."""
    rows = []
    for t in range(4):
        for split, counts in (("train", (20, 3, 3)), ("val", (10, 2, 2)), ("test", (2, 2, 2))):
            for c, n in enumerate(counts):
                rows += [(f"t{t}", split, [float(c), float(i)], c) for i in range(n)]
    return _write(
        tmp_path / "u.parquet", _table(rows, 2, pa.int64(), meta_split=["train"] * len(rows))
    )


def test_classification_shots_and_queries_are_per_class(tmp_path: Path) -> None:
    path = _unbalanced(tmp_path)
    fam = ParquetFamily(str(path), shots=3, queries=2)
    assert fam.ways == 3 and fam.episode_examples() == 15
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = fam.sample("train", 4, g)
        assert b.xs.shape == (4, 9, 2) and b.xq.shape == (4, 6, 2)
        for i in range(4):
            assert Counter(b.ys[i].tolist()) == {0: 3, 1: 3, 2: 3}
            assert Counter(b.yq[i].tolist()) == {0: 2, 1: 2, 2: 2}
            assert torch.equal(b.xs[i][:, 0].long(), b.ys[i])  # rows keep their labels
            assert len({tuple(r) for r in b.xs[i].tolist()}) == 9  # without replacement
    two = ParquetFamily(str(path), shots=3, queries=2, ways=2)
    b = two.sample("train", 8, g)
    for i in range(8):
        counts = Counter(b.ys[i].tolist())
        assert len(counts) == 2 and set(counts.values()) == {3}
    with pytest.raises(ConfigError, match="ways=4 but task 't0' has 3 classes"):
        ParquetFamily(str(path), shots=3, queries=2, ways=4)
    with pytest.raises(
        ConfigError, match="has 3 train rows of class 1, fewer than shots=4 per class"
    ):
        ParquetFamily(str(path), shots=4, queries=2)
    assert ParquetFamily(str(path), shots=4, queries=2, replace=True).sample(
        "train", 1, g
    ).xs.shape == (1, 12, 2)


def test_unknown_family_option_lists_the_valid_ones(tmp_path: Path) -> None:
    path = _unbalanced(tmp_path)
    with pytest.raises(ConfigError) as exc:
        make_family("parquet", path=str(path), shotz=3)
    msg = str(exc.value)
    assert "unknown option 'shotz'" in msg and "valid: path, shots, queries, ways, shape" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="ways applies to classification"):
        make_family(
            "parquet",
            path=str(_write(tmp_path / "r.parquet", _table(_good_rows(), 2))),
            shots=1,
            queries=1,
            ways=2,
        )


def test_data_help_documents_the_family_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    text = capsys.readouterr().out
    for key in ("path", "shots", "queries", "ways", "shape", "replace", "n_classes", "cache_tasks"):
        assert f"  {key} " in text
    assert "per class for classification" in text and "parquet:TASK_ID" in text


def test_validate_reports_shape_and_held_out_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = _sin_tasks(6)
    path = tmp_path / "s.parquet"
    write_tasks(path, tasks, meta_split=["train", "train", "val", "test", "train", "test"])
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    held = sorted([tasks[3].task_id, tasks[5].task_id])
    assert "feature shape: 1 (flat" in out
    assert (
        f"held-out task ids, in index order (tune one with --task parquet:TASK_ID or parquet:INDEX): {', '.join(held)}"
        in out
    )
    write_tasks(tmp_path / "d.parquet", _digit_tasks(3), meta_split="test")
    assert main(["data", "validate", str(tmp_path / "d.parquet")]) == 0
    assert "feature shape: 1x8x8 (declared)" in capsys.readouterr().out


def test_held_out_task_by_id_or_index(tmp_path: Path) -> None:
    from raymeta.core.train import MetaTrainConfig, MetaTrainer
    from raymeta.orchestration.tune.plan import resolve_task

    tasks = _sin_tasks(6)
    for t in tasks:
        t.task_id = f"site:{t.task_id}"  # ids may hold ':' themselves
    path = tmp_path / "s.parquet"
    write_tasks(path, tasks, meta_split=["train", "train", "val", "test", "train", "test"])
    opts = {"path": str(path), "shots": 2, "queries": 2}
    ckpt = MetaTrainer(
        MetaTrainConfig(family="parquet", family_options=opts, steps=1, val_tasks=1)
    ).to_checkpoint()
    fam = ParquetFamily(**opts)  # type: ignore[arg-type]
    ids = fam.task_ids("test")
    for i, tid in enumerate(ids):
        by_id = resolve_task(f"parquet:{tid}", ckpt)
        assert by_id.task_id == tid and torch.equal(by_id.x_test, fam.task("test", i).x_test)
        assert resolve_task(f"parquet:{i}", ckpt).task_id == tid
    with pytest.raises(ConfigError, match="is in meta-split 'train', not held out"):
        resolve_task(f"parquet:{fam.task_ids('train')[0]}", ckpt)
    with pytest.raises(ConfigError, match="'nope' is not a held-out task id"):
        resolve_task("parquet:nope", ckpt)
    with pytest.raises(ConfigError, match="trained on family 'parquet'"):
        resolve_task("sinusoid:1", ckpt)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_task("parquet:7", ckpt)


# ---------------------------------------------------------------- raymeta data convert


def _plain_table(n: int = 120, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "price": rng.normal(size=n),
            "week": rng.integers(0, 52, n),
            "promo": rng.random(n) > 0.5,
            "units": rng.normal(size=n).astype(np.float32),
            "store": [f"s{i % 6}" for i in range(n)],
            "city": ["x"] * n,
            "label": [("cat", "dog")[(i // 6) % 2] for i in range(n)],
        }
    )


def test_convert_a_plain_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "t.parquet", _plain_table())
    out = tmp_path / "tasks.parquet"
    argv = ["data", "convert", "--input", str(src), "--out", str(out)]
    argv += [
        "--feature-columns",
        "price,week,promo",
        "--target-column",
        "units",
        "--task-column",
        "store",
    ]
    assert main(argv) == 0
    assert "120 rows, 6 tasks, regression, feature shape 3" in capsys.readouterr().out
    idx = scan_tasks(out)
    assert idx.width == 3 and idx.kind == "regression" and len(idx.rows) == 6
    assert all(min(r.values()) >= 1 for r in idx.rows.values())
    t = pq.read_table(out)
    src_t = pq.read_table(src)
    x = np.asarray(t["features"].to_pylist(), np.float32)
    want = np.stack([src_t[c].to_numpy().astype(np.float32) for c in ("price", "week", "promo")], 1)
    np.testing.assert_array_equal(x, want)  # rows stay in file order
    assert t["task_id"].to_pylist() == src_t["store"].to_pylist()
    # rerun: same split assignment; --out exists is refused without --overwrite
    assert main(argv) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert pq.read_table(out)["split"].to_pylist() == t["split"].to_pylist()
    # string labels -> class ids, split stratified per class
    cls = tmp_path / "cls.parquet"
    argv2 = [
        "data",
        "convert",
        "--input",
        str(src),
        "--out",
        str(cls),
        "--feature-columns",
        "price,week",
    ]
    assert (
        main(
            [
                *argv2,
                "--target-column",
                "label",
                "--task-column",
                "store",
                "--kind",
                "classification",
            ]
        )
        == 0
    )
    assert "classes: 0=cat, 1=dog" in capsys.readouterr().out
    fam = ParquetFamily(str(cls), shots=2, queries=1)
    assert fam.kind == "classification" and fam.ways == 2 and fam.output_dim == 2
    # shaped, and one task
    img = tmp_path / "img.parquet"
    argv3 = [
        "data",
        "convert",
        "--input",
        str(src),
        "--out",
        str(img),
        "--feature-columns",
        "price,week,promo,units",
    ]
    assert (
        main([*argv3, "--target-column", "label", "--kind", "classification", "--shape", "1,2,2"])
        == 0
    )
    task = load_task_file(img)
    assert task.input_shape == (1, 2, 2) and task.task_id == "t"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--feature-columns", "price,city"], "feature column 'city' is string, not numeric"),
        (["--feature-columns", "price,nope"], "no column 'nope'"),
        (
            ["--feature-columns", "price,week", "--shape", "3,3"],
            "feature shape 3x3 holds 9 values but the features have width 2",
        ),
        (
            ["--feature-columns", "price,units"],
            "column 'units' is both a feature and the target column",
        ),
        (["--feature-columns", "price", "--task-column", "nope"], "no task column 'nope'"),
        (
            ["--feature-columns", "price", "--kind", "classification"],
            "classification needs integer or string labels",
        ),
        (
            ["--feature-columns", "price", "--val-fraction", "0.5", "--test-fraction", "0.5"],
            "must be below 1",
        ),
    ],
)
def test_convert_errors_are_one_line_and_write_nothing(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path / "t.parquet", _plain_table())
    out = tmp_path / "o" / "tasks.parquet"
    argv = ["data", "convert", "--input", str(src), "--out", str(out), "--target-column", "units"]
    if "--task-column" not in extra:
        argv += ["--task-column", "store"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raymeta: error: ") and err.count("\n") == 1 and match in err, err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_convert_too_few_rows_names_the_task_and_class(tmp_path: Path) -> None:
    t = pa.table({"a": [1.0, 2.0, 3.0, 4.0], "y": [0, 0, 0, 1], "task": ["k"] * 4})
    src = _write(tmp_path / "t.parquet", t)
    with pytest.raises(DataError, match="task 'k' has 1 row of class '1', too few"):
        convert_table(src, tmp_path / "o.parquet", ["a"], "y", task_column="task")
    assert not (tmp_path / "o.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cols=st.lists(
        st.sampled_from(["price", "week", "promo", "units"]), min_size=1, max_size=4, unique=True
    ),
    n=st.integers(60, 200),
    val=st.floats(0.05, 0.4),
    test=st.floats(0.05, 0.4),
    split_col=st.booleans(),
)
def test_convert_round_trips_any_columns(
    tmp_path: Path, cols: list[str], n: int, val: float, test: float, split_col: bool
) -> None:
    table = _plain_table(n, seed=n)
    if split_col:
        table = table.append_column("sp", pa.array([SPLITS_CYCLE[(i // 6) % 3] for i in range(n)]))
    src = tmp_path / f"t{n}.parquet"
    pq.write_table(table, src)
    out = tmp_path / f"o{n}.parquet"
    res = convert_table(
        src, out, cols, "label", task_column="store", kind="classification",
        split_column="sp" if split_col else None, val_fraction=val, test_fraction=test,
    )  # fmt: skip
    assert res.rows == n and res.tasks == min(n, 6) and res.width == len(cols)
    t = pq.read_table(out)
    want = np.stack([table[c].to_numpy().astype(np.float32) for c in cols], 1)
    np.testing.assert_array_equal(np.asarray(t["features"].to_pylist(), np.float32), want)
    assert t["target"].to_pylist() == [("cat", "dog").index(v) for v in table["label"].to_pylist()]
    idx = scan_tasks(out)
    for r in idx.rows.values():
        assert min(r.values()) >= 1
    out.unlink()


SPLITS_CYCLE = ("train", "val", "test")
