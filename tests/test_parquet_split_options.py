"""Parquet fixed tasks take the split-size options ``task_shots``, ``val_size``, ``test_size``."""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymeta.errors import ConfigError
from raymeta.tasks import (
    SPLIT_OPTIONS,
    FamilySpec,
    Task,
    check_split_options,
    make_family,
    resize_splits,
)
from raymeta.tasks.base import SPLITS
from raymeta.tasks.parquet import OPTIONS_DOC, ParquetFamily, resplit_order, write_tasks

SPLIT_CODE = {s: float(i) for i, s in enumerate(SPLITS)}
Row = tuple[float, ...]


def _split_rows(task: int, split: str, n: int, cls: int | None = None) -> torch.Tensor:
    """``n`` rows that say where they come from: (task, split, class, row)."""
    c = -1.0 if cls is None else float(cls)
    return torch.tensor([[float(task), SPLIT_CODE[split], c, float(i)] for i in range(n)])


def _regression(task: int, sizes: tuple[int, int, int]) -> Task:
    parts = {s: _split_rows(task, s, n) for s, n in zip(SPLITS, sizes, strict=True)}
    return Task(
        f"r{task}",
        *(t for s in SPLITS for t in (parts[s], parts[s][:, 3:4] + 100 * SPLIT_CODE[s])),
        kind="regression",
        output_dim=1,
    )


def _classification(task: int, counts: dict[str, tuple[int, ...]]) -> Task:
    out: list[torch.Tensor] = []
    for s in SPLITS:
        xs = [_split_rows(task, s, n, c) for c, n in enumerate(counts[s])]
        x = torch.cat(xs)
        out += [x, x[:, 2].long()]
    return Task(f"c{task}", *out, kind="classification", output_dim=len(counts["train"]))


def _write(path: Path, tasks: list[Task], meta: str | list[str] | None = None) -> Path:
    """``tasks`` held out (meta-test), plus a meta-train copy of the first (sorted last)."""
    if meta is None:
        tasks = [*tasks, dataclasses.replace(tasks[0], task_id="z-train")]
        meta = ["test"] * (len(tasks) - 1) + ["train"]
    write_tasks(path, tasks, meta_split=meta)
    return path


def _rows(x: torch.Tensor) -> list[Row]:
    return [tuple(r) for r in x.tolist()]


def _stored(fam: ParquetFamily, task_id: str) -> dict[str, list[Row]]:
    return {s: _rows(fam.rows(task_id)[s][0]) for s in SPLITS}


def _fixed(fam: ParquetFamily) -> dict[str, Task]:
    return {t: fam.task("test", i) for i, t in enumerate(fam.task_ids("test"))}


def _reg_set(tmp_path: Path, n_tasks: int = 3, sizes: tuple[int, int, int] = (10, 6, 5)) -> Path:
    return _write(tmp_path / "r.parquet", [_regression(i, sizes) for i in range(n_tasks)])


# ---------------------------------------------------------------- regression


def test_regression_resplit_sizes_use_only_train_and_val_rows(tmp_path: Path) -> None:
    path = _reg_set(tmp_path)
    plain = ParquetFamily(str(path), shots=1, queries=1)
    fam = ParquetFamily(str(path), shots=1, queries=1, task_shots=7, val_size=5, test_size=3)
    for tid, t in _fixed(fam).items():
        stored = _stored(plain, tid)
        train, val, test = _rows(t.x_train), _rows(t.x_val), _rows(t.x_test)
        assert (len(train), len(val), len(test)) == (7, 5, 3)
        assert len(t.y_train) == 7 and len(t.y_val) == 5 and len(t.y_test) == 3
        labelled = set(stored["train"]) | set(stored["val"])
        assert set(train) <= labelled and set(val) <= labelled and not set(train) & set(val)
        assert test == stored["test"][:3]  # the held-out split: only capped, in stored order
        assert torch.equal(t.y_train[:, 0], t.x_train[:, 3] + 100 * t.x_train[:, 1])  # rows whole
        assert any("re-split" in n for n in t.notes) and any("capped" in n for n in t.notes)
    # the options never change what meta-training sees
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = plain.sample("test", 4, g1), fam.sample("test", 4, g2)
    assert torch.equal(a.xs, b.xs) and torch.equal(a.xq, b.xq)


def test_one_size_leaves_the_rest_to_the_other_split_and_none_keeps_the_stored_splits(
    tmp_path: Path,
) -> None:
    path = _reg_set(tmp_path)
    plain = ParquetFamily(str(path), shots=1, queries=1)
    for opts, want in (({"val_size": 12}, (4, 12)), ({"task_shots": 15}, (15, 1))):
        fam = ParquetFamily(str(path), shots=1, queries=1, **opts)
        for t in _fixed(fam).values():
            assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (*want, 5)
    for tid, t in _fixed(plain).items():
        stored = _stored(plain, tid)
        assert [_rows(t.x_train), _rows(t.x_val), _rows(t.x_test)] == [stored[s] for s in SPLITS]
        assert t.notes == []
    assert ParquetFamily(str(path), shots=1, queries=1, test_size=5).task("test", 0).notes == []


def test_resplit_is_deterministic_across_builds_and_processes(tmp_path: Path) -> None:
    path = _reg_set(tmp_path)
    opts: dict[str, Any] = {"path": str(path), "shots": 1, "queries": 1, "task_shots": 6}
    a, b = _fixed(ParquetFamily(**opts)), _fixed(ParquetFamily(**opts))
    for tid in a:
        for s in ("x_train", "y_train", "x_val", "y_val", "x_test"):
            assert torch.equal(getattr(a[tid], s), getattr(b[tid], s))
    # keyed by the task id only (SHA-256 + splitmix64): pinned, so no process or machine differs
    assert resplit_order("r0", 10).tolist() == [2, 5, 7, 0, 8, 3, 1, 9, 4, 6]
    assert resplit_order("r1", 10).tolist() != resplit_order("r0", 10).tolist()
    assert sorted(resplit_order("x", 1000).tolist()) == list(range(1000))
    # tasks shuffle differently: their train splits hold different stored rows
    assert len({tuple(r[3] for r in _rows(t.x_train)) for t in a.values()}) == len(a)


# ---------------------------------------------------------------- classification


def _cls_set(tmp_path: Path) -> Path:
    counts = {"train": (6, 3, 4), "val": (2, 3, 1), "test": (3, 2, 4)}
    return _write(tmp_path / "c.parquet", [_classification(i, counts) for i in range(3)])


def test_classification_sizes_are_per_class(tmp_path: Path) -> None:
    path = _cls_set(tmp_path)
    plain = ParquetFamily(str(path), shots=1, queries=1)
    fam = ParquetFamily(str(path), shots=1, queries=1, task_shots=2, val_size=3, test_size=2)
    for tid, t in _fixed(fam).items():
        assert Counter(t.y_train.tolist()) == {0: 2, 1: 2, 2: 2}
        assert Counter(t.y_val.tolist()) == {0: 3, 1: 3, 2: 3}
        assert Counter(t.y_test.tolist()) == {0: 2, 1: 2, 2: 2}
        assert torch.equal(t.x_train[:, 2].long(), t.y_train)  # rows keep their labels
        stored = _stored(plain, tid)
        labelled = set(stored["train"]) | set(stored["val"])
        assert set(_rows(t.x_train)) | set(_rows(t.x_val)) <= labelled
        assert not set(_rows(t.x_train)) & set(_rows(t.x_val))
        first = [r for c in range(3) for r in [q for q in stored["test"] if q[2] == c][:2]]
        assert sorted(_rows(t.x_test)) == sorted(first)
        assert t.output_dim == plain.output_dim
    rest = ParquetFamily(str(path), shots=1, queries=1, task_shots=3).task("test", 0)
    assert Counter(rest.y_train.tolist()) == {0: 3, 1: 3, 2: 3}
    assert Counter(rest.y_val.tolist()) == {0: 5, 1: 3, 2: 2}  # each class's rest


# ---------------------------------------------------------------- errors


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def fetch(*_: Any, **__: Any) -> Any:
        raise AssertionError("rows were read")

    monkeypatch.setattr(ParquetFamily, "fetch", fetch)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (
            {"task_shots": 10, "val_size": 7},
            r"task 'r0' has 16 train\+val rows, fewer than task_shots \+ val_size = 17 ",
        ),
        ({"val_size": 16}, "task 'r0' has 16 train\\+val rows, fewer than val_size=16 plus at"),
        ({"task_shots": 16}, "task 'r0' has 16 train\\+val rows, fewer than task_shots=16 plus"),
        ({"test_size": 6}, "task 'r0' has 5 test rows, fewer than test_size=6 "),
    ],
)
def test_too_large_sizes_fail_at_build_naming_task_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opts: dict[str, int], match: str
) -> None:
    path = _reg_set(tmp_path)
    _no_reads(monkeypatch)
    with pytest.raises(ConfigError, match=match) as exc:
        ParquetFamily(str(path), shots=1, queries=1, **opts)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)


def test_too_large_sizes_name_the_smallest_task_and_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = [_regression(i, (10, 6, 5)) for i in range(3)]
    path = _write(tmp_path / "m.parquet", [*big, _regression(7, (3, 2, 5))])
    with pytest.raises(ConfigError, match="task 'r7' has 5 train\\+val rows, fewer than"):
        ParquetFamily(str(path), shots=1, queries=1, val_size=5)
    cls = _cls_set(tmp_path)
    _no_reads(monkeypatch)
    with pytest.raises(
        ConfigError,
        match=r"task 'c0' has 5 train\+val rows of class 2, fewer than task_shots \+ val_size = 6 per class",
    ):
        ParquetFamily(str(cls), shots=1, queries=1, task_shots=3, val_size=3)
    with pytest.raises(ConfigError, match="task 'c0' has 2 test rows of class 1, fewer than"):
        ParquetFamily(str(cls), shots=1, queries=1, test_size=3)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3", 10**7])
def test_bad_size_values_are_one_line_config_errors(tmp_path: Path, bad: Any) -> None:
    path = _reg_set(tmp_path)
    for key in SPLIT_OPTIONS:
        with pytest.raises(ConfigError, match=f"parquet: {key} must be an integer"):
            ParquetFamily(str(path), shots=1, queries=1, **{key: bad})


# ---------------------------------------------------------------- options round trip, tune


def test_sizes_round_trip_through_the_family_spec(tmp_path: Path) -> None:
    from raymeta.tasks.contract import check_task_family

    assert set(SPLIT_OPTIONS) <= set(OPTIONS_DOC)
    path = _reg_set(tmp_path, n_tasks=4)
    fam = make_family("parquet", path=str(path), shots=2, queries=2, task_shots=6, test_size=4)
    spec = fam.spec().to_dict()
    assert spec["options"]["task_shots"] == 6 and spec["options"]["val_size"] is None
    again = make_family(FamilySpec.from_dict(spec))
    for i in range(4):
        a, b = fam.task("test", i), again.task("test", i)
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_val, b.x_val)
    resized = resize_splits(fam.spec(), check_split_options({"val_size": 3}, "--task-option"))
    assert resized.options["val_size"] == 3 and resized.options["task_shots"] == 6
    t = make_family(resized).task("test", 0)
    assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (6, 3, 4)
    every = [_regression(i, (10, 6, 5)) for i in range(3)]
    three = _write(tmp_path / "3.parquet", every, meta=["train", "val", "test"])
    check_task_family("parquet", {"path": str(three), "shots": 2, "queries": 2, "val_size": 4})


def test_tune_resizes_a_held_out_task_of_a_checkpoint_parquet_family(tmp_path: Path) -> None:
    from raymeta.core.train import MetaTrainConfig, MetaTrainer
    from raymeta.orchestration.tune.plan import resolve_task

    tasks = [_regression(i, (10, 6, 5)) for i in range(4)]
    path = _write(tmp_path / "s.parquet", tasks, meta=["train", "train", "val", "test"])
    opts = {"path": str(path), "shots": 2, "queries": 2, "val_size": 4}
    ckpt = MetaTrainer(
        MetaTrainConfig(family="parquet", family_options=opts, steps=1, val_tasks=1)
    ).to_checkpoint()
    assert ckpt.family.options["val_size"] == 4  # a meta-checkpoint keeps the sizes
    t = resolve_task("parquet:r3", ckpt)
    assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (12, 4, 5)
    t = resolve_task("parquet:r3", ckpt, {"val_size": 5, "task_shots": 8, "test_size": 2})
    assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (8, 5, 2)
    assert resolve_task("parquet:0", ckpt, {"val_size": 5}).task_id == "r3"
    with pytest.raises(ConfigError, match="task 'r0' has 16 train\\+val rows, fewer than"):
        resolve_task("parquet:r3", ckpt, {"val_size": 20})
    with pytest.raises(ConfigError, match="cannot be overridden"):
        resolve_task("parquet:r3", ckpt, {"shots": 5})
    one = _write(tmp_path / "one.parquet", [_regression(9, (4, 3, 2))])
    with pytest.raises(ConfigError, match="not to Parquet task files"):
        resolve_task(str(one), ckpt, {"val_size": 2})


# ---------------------------------------------------------------- property


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, list[tuple[int, ...]], dict[str, int | None]]:
    kind = draw(st.sampled_from(["regression", "classification"]))
    n_cls = 1 if kind == "regression" else draw(st.integers(2, 3))
    counts = [tuple(draw(st.integers(1, 6)) for _ in range(n_cls)) for _ in SPLITS]
    size = st.none() | st.integers(1, 9)
    opts = {k: draw(size) for k in SPLIT_OPTIONS}
    return kind, counts, opts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_case())
def test_property_sizes_rows_and_errors(
    case: tuple[str, list[tuple[int, ...]], dict[str, int | None]],
) -> None:
    kind, counts, opts = case
    by = dict(zip(SPLITS, counts, strict=True))
    if kind == "regression":
        tasks = [_regression(i, (by["train"][0], by["val"][0], by["test"][0])) for i in range(2)]
    else:
        tasks = [_classification(i, by) for i in range(2)]
    ts, vs, es = opts["task_shots"], opts["val_size"], opts["test_size"]
    labelled = [a + b for a, b in zip(by["train"], by["val"], strict=True)]
    fits = all(
        ts + vs <= n if ts and vs else (ts or vs or 0) < n if ts or vs else True for n in labelled
    ) and (es is None or es <= min(by["test"]))
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / "p.parquet", tasks)
        if not fits:
            with pytest.raises(ConfigError, match="parquet: task '.0' has"):
                ParquetFamily(str(path), shots=1, queries=1, **opts)  # type: ignore[arg-type]
            return
        fam = ParquetFamily(str(path), shots=1, queries=1, **opts)  # type: ignore[arg-type]
        again = ParquetFamily(str(path), shots=1, queries=1, **opts)  # type: ignore[arg-type]
        plain = ParquetFamily(str(path), shots=1, queries=1)
        for i, tid in enumerate(fam.task_ids("test")):
            t, u, stored = fam.task("test", i), again.task("test", i), _stored(plain, tid)
            assert torch.equal(t.x_train, u.x_train) and torch.equal(t.x_val, u.x_val)
            train, val, test = _rows(t.x_train), _rows(t.x_val), _rows(t.x_test)
            pool = stored["train"] + stored["val"]
            assert not set(train) & set(val) and set(train + val) <= set(pool)
            for c, n in enumerate(labelled):
                cid = -1.0 if kind == "regression" else float(c)
                n_tr = sum(r[2] == cid for r in train)
                n_va = sum(r[2] == cid for r in val)
                if ts is None and vs is None:
                    assert (n_tr, n_va) == (by["train"][c], by["val"][c])
                else:
                    assert n_tr == (ts if ts is not None else n - (vs or 0))
                    assert n_va == (vs if vs is not None else n - n_tr)
                keep = [r for r in stored["test"] if r[2] == cid]
                assert [r for r in test if r[2] == cid] == keep[: es or len(keep)]
