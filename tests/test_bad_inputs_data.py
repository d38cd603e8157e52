"""Bad inputs to ``sweep``, ``report``, ``data`` and Parquet task files (issue #12, items 6-8).

Every case runs the real CLI in-process and must end in exit 2 with exactly one stderr line
``raymeta: error: ...``, no traceback, before any work: nothing new under the output path and
no Ray task launched (the sweep cases fail in the driver, before ``ray_context``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymeta.cli.main import main
from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.results import ResultSink
from raymeta.results.synthetic import synthetic_rows


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory, ckpt_dir: Path) -> dict[str, Path]:
    """A sinusoid meta-checkpoint, a Parquet task set, a Parquet-family checkpoint (3 held-out
    tasks) and a results dataset, shared read-only by every case."""
    root = tmp_path_factory.mktemp("bad_inputs_fx")
    sin = root / "sin.parquet"
    assert main(["data", "make-sinusoid", "--out", str(sin), "--tasks", "30"]) == 0
    pmeta = root / "pmeta"
    opts = {"path": str(sin), "shots": 5, "queries": 5}
    tr = meta_train(
        MetaTrainConfig(family="parquet", family_options=opts, steps=2, meta_batch=4, val_tasks=2)
    )
    save_meta_checkpoint(pmeta, tr.to_checkpoint())
    res = root / "results"
    ResultSink(res, "demo").append(synthetic_rows(sweep="demo", tasks=("a",), seeds=(0,)), "all")
    return {"meta": ckpt_dir, "pmeta": pmeta, "sin": sin, "results": res}


def _unwritable(tmp: Path) -> Path:
    """A directory this process cannot create files in (root ignores permission bits, so root
    gets a path under sysfs, which refuses new files whatever the user)."""
    if os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs to stand in for a read-only directory")
        return Path("/sys/kernel")
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def _table(fx: dict[str, Path], **columns: Any) -> pa.Table:
    t = pq.read_table(fx["sin"])
    cols = {c: t[c] for c in t.column_names}
    cols.update(columns)
    return pa.table(cols)


def _write(tmp: Path, name: str, table: pa.Table) -> str:
    pq.write_table(table, tmp / name)
    return str(tmp / name)


def _non_utf8(col: pa.ChunkedArray) -> pa.Array:
    raw = pa.array([b"\xff" + v.as_py().encode() for v in col.combine_chunks()], pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # bytes Arrow never checks


def _sweep(tmp: Path, fx: dict[str, Path], text: str, meta: str = "meta") -> str:
    body = f"strategies: [meta+fixed-default]\ntasks: 1\npopulation: 1\nsteps_per_member: 2\n{text}"
    if "meta:" not in text:
        body = f"meta: [{fx[meta]}]\n" + body
    if "tasks:" in text:
        body = body.replace("tasks: 1\n", "", 1)
    p = tmp / "sweep.yaml"
    p.write_text(body)
    return str(p)


def _sweep_cmd(text: str, meta: str = "meta", *extra: str) -> Callable[..., list[str]]:
    def build(tmp: Path, fx: dict[str, Path]) -> list[str]:
        return ["sweep", _sweep(tmp, fx, text, meta), "--out", str(tmp / "out"), *extra]

    return build


ALIAS_BOMB = "".join(
    f"{a}: &{a} [{', '.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefg", "bcdefgh", strict=True)
)

SWEEP_CASES: dict[str, Callable[..., list[str]]] = {
    "max-concurrency -1 (spun forever)": _sweep_cmd("", "meta", "--max-concurrency", "-1"),
    "max-concurrency 0": _sweep_cmd("", "meta", "--max-concurrency", "0"),
    "alias bomb under name": lambda tmp, fx: [
        "sweep",
        _sweep(tmp, fx, "a: &a [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB + "name: *h\n"),
        "--out",
        str(tmp / "out"),
    ],
    "name not a string": _sweep_cmd("name: [a, b]\n"),
    "seed -1 (raised in a Ray task)": _sweep_cmd("seeds: [-1]\n"),
    "seed true (accepted)": _sweep_cmd("seeds: [true]\n"),
    "seed 2**70": _sweep_cmd(f"seeds: [{2**70}]\n"),
    "seeds a string": _sweep_cmd("seeds: abc\n"),
    "tasks 1e9": _sweep_cmd("tasks: 1000000000\n"),
    "tasks true": _sweep_cmd("tasks: true\n"),
    "tasks float": _sweep_cmd("tasks: 2.5\n"),
    "task index a string": _sweep_cmd("tasks: [a]\n"),
    "population true": _sweep_cmd("population: true\n"),
    "population huge": _sweep_cmd("population: 1000000000\n"),
    "steps_per_member nan": _sweep_cmd("steps_per_member: .nan\n"),
    "interval 0": _sweep_cmd("interval: 0\n"),
    "fixed_steps a list": _sweep_cmd("fixed_steps: [1, 2]\n"),
    "meta an int": _sweep_cmd("meta: [1]\n"),
    "meta a mapping": _sweep_cmd("meta: {a: 1}\n"),
    "meta missing": _sweep_cmd("meta: [/nonexistent/meta]\n"),
    "strategies a mapping": _sweep_cmd("strategies: {a: 1}\n"),
    "strategy a mapping": _sweep_cmd("strategies: [{a: 1}]\n"),
    "strategy unknown": _sweep_cmd("strategies: [meta+learned+hyperband]\n"),
    "learned prior without priors": _sweep_cmd("strategies: [meta+learned+pbt]\n"),
    "task_options not a mapping": _sweep_cmd("task_options: 5\n"),
    "task_options value nan": _sweep_cmd("task_options: {val_size: .nan}\n"),
    "task_options value huge": _sweep_cmd("task_options: {val_size: 10000000000}\n"),
    "task_options unknown key": _sweep_cmd("task_options: {ways: 3}\n"),
    "unknown key": _sweep_cmd("budgett: 3\n"),
    "too many units": _sweep_cmd("tasks: 10000\nseeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"),
    "parquet task index out of range (found in the Ray task)": _sweep_cmd("tasks: [50]\n", "pmeta"),
    "out is a file": lambda tmp, fx: ["sweep", _sweep(tmp, fx, ""), "--out", str(fx["sin"])],
    "out unwritable": lambda tmp, fx: [
        "sweep",
        _sweep(tmp, fx, ""),
        "--out",
        str(_unwritable(tmp) / "out"),
    ],
}


def _report(*extra: str, root: str = "results") -> Callable[..., list[str]]:
    return lambda tmp, fx: ["report", str(fx[root]), *extra]


def _corrupt_results(tmp: Path, fx: dict[str, Path], data: bytes | None) -> str:
    root = tmp / "res"
    shutil.copytree(fx["results"], root)
    part = next((root / "sweep=demo").glob("part-*.parquet"))
    if data is None:
        part.unlink()
        part.mkdir()
    else:
        part.write_bytes(data if data else part.read_bytes()[: len(part.read_bytes()) // 2])
    return str(root)


def _empty_dataset(tmp: Path) -> str:
    root = tmp / "empty"
    ResultSink(root, "demo")
    return str(root)


REPORT_CASES: dict[str, Callable[..., list[str]]] = {
    "target nan (accepted)": _report("--target", "nan"),
    "target inf": _report("--target", "inf"),
    "target a string": _report("--target", "abc"),
    "plots is a file": lambda tmp, fx: ["report", str(fx["results"]), "--plots", str(fx["sin"])],
    "plots unwritable": lambda tmp, fx: [
        "report",
        str(fx["results"]),
        "--plots",
        str(_unwritable(tmp) / "plots"),
    ],
    "dir is a file": lambda tmp, fx: ["report", str(fx["sin"])],
    "dir is not a dataset": lambda tmp, fx: ["report", str(tmp)],
    "dir missing": lambda tmp, fx: ["report", str(tmp / "missing")],
    "dataset empty": lambda tmp, fx: ["report", _empty_dataset(tmp)],
    "part truncated": lambda tmp, fx: ["report", _corrupt_results(tmp, fx, b"")],
    "part garbage": lambda tmp, fx: ["report", _corrupt_results(tmp, fx, b"garbage")],
    "part a directory": lambda tmp, fx: ["report", _corrupt_results(tmp, fx, None)],
    "metric unknown": _report("--metric", "nope"),
    "format bad": _report("--format", "xml"),
    "sweep name bad": _report("--sweep", "../x"),
    "sweep unknown": _report("--sweep", "zzz"),
}


def _validate(
    make: Callable[[Path, dict[str, Path]], str], *flags: str
) -> Callable[..., list[str]]:
    return lambda tmp, fx: ["data", "validate", *flags, make(tmp, fx)]


def _dup_dir(tmp: Path, fx: dict[str, Path]) -> str:
    d = tmp / "dup"
    d.mkdir()
    shutil.copy(fx["sin"], d / "a.parquet")
    shutil.copy(fx["sin"], d / "b.parquet")
    return str(d)


def _features(fx: dict[str, Path], fill: float) -> pa.Array:
    t = pq.read_table(fx["sin"])
    flat = np.asarray(t["features"].combine_chunks().flatten()).copy()
    flat[3] = fill
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), 1)


def _one_task(fx: dict[str, Path], **columns: Any) -> pa.Table:
    t = pq.read_table(fx["sin"]).slice(0, 90)  # one sinusoid task: 20 + 20 + 50 rows
    cols = {c: t[c] for c in ("task_id", "split", "features", "target")}
    cols.update(columns)
    return pa.table(cols)


def _n(fx: dict[str, Path]) -> int:
    return pq.read_metadata(fx["sin"]).num_rows


DATA_CASES: dict[str, Callable[..., list[str]]] = {
    "non-UTF-8 task_id": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _table(fx, task_id=_non_utf8(pq.read_table(fx["sin"])["task_id"]))
        )
    ),
    "non-UTF-8 task_id, one task": _validate(
        lambda tmp, fx: _write(
            tmp,
            "a.parquet",
            _one_task(fx, task_id=_non_utf8(pq.read_table(fx["sin"])["task_id"].slice(0, 90))),
        ),
        "--one-task",
    ),
    "two identical files (rows doubled)": _validate(_dup_dir),
    "zero-row file ('a valid task set')": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", pq.read_table(fx["sin"]).slice(0, 0))
    ),
    "zero-row file, one task": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", pq.read_table(fx["sin"]).slice(0, 0)),
        "--one-task",
    ),
    "label 2**40 (2**40 output units)": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _table(fx, target=pa.array([2**40] + [0] * (_n(fx) - 1), pa.int64()))
        )
    ),
    "label 2**40, one task": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _one_task(fx, target=pa.array([2**40] + [0] * 89, pa.int64()))
        ),
        "--one-task",
    ),
    "negative label": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, target=pa.array([-1] * _n(fx))))
    ),
    "NaN feature": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, features=_features(fx, np.nan)))
    ),
    "inf feature": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, features=_features(fx, np.inf)))
    ),
    "NaN target": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _table(fx, target=pa.array([np.nan] * _n(fx), pa.float32()))
        )
    ),
    "ragged features": _validate(
        lambda tmp, fx: _write(
            tmp,
            "a.parquet",
            _table(
                fx,
                features=pa.array([[1.0]] * (_n(fx) - 1) + [[1.0, 2.0]], pa.list_(pa.float32())),
            ),
        )
    ),
    "empty feature lists": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _table(fx, features=pa.array([[]] * _n(fx), pa.list_(pa.float32())))
        )
    ),
    "string target": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, target=pa.array(["a"] * _n(fx))))
    ),
    "integer features": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _table(fx, features=pa.array([[1]] * _n(fx), pa.list_(pa.int64())))
        )
    ),
    "int task_id": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, task_id=pa.array([1] * _n(fx))))
    ),
    "null task_id, one task": _validate(
        lambda tmp, fx: _write(
            tmp, "a.parquet", _one_task(fx, task_id=pa.array([None] * 90, pa.string()))
        ),
        "--one-task",
    ),
    "unknown split": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", _table(fx, split=pa.array(["dev"] * _n(fx))))
    ),
    "missing column": _validate(
        lambda tmp, fx: _write(tmp, "a.parquet", pq.read_table(fx["sin"]).drop(["target"]))
    ),
    "directory without parquet files": _validate(lambda tmp, fx: str(tmp)),
    "non-parquet file named .parquet": _validate(
        lambda tmp, fx: (tmp / "x.parquet").write_text("hello") and str(tmp / "x.parquet")
    ),
    "missing path": _validate(lambda tmp, fx: str(tmp / "missing.parquet")),
    "make-sinusoid tasks -1": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(tmp / "o.parquet"),
        "--tasks",
        "-1",
    ],  # fmt: skip
    "make-sinusoid tasks 1e9": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(tmp / "o.parquet"),
        "--tasks",
        "1000000000",
    ],  # fmt: skip
    "make-sinusoid train-size 1e12": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(tmp / "o.parquet"),
        "--train-size",
        "1000000000000",
    ],  # fmt: skip
    "make-sinusoid tasks abc": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(tmp / "o.parquet"),
        "--tasks",
        "abc",
    ],  # fmt: skip
    "make-sinusoid out is a directory": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(tmp),
        "--overwrite",
    ],  # fmt: skip
    "make-sinusoid out's parent is a file": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(fx["sin"] / "o.parquet"),
    ],  # fmt: skip
    "make-sinusoid out unwritable": lambda tmp, fx: [
        "data",
        "make-sinusoid",
        "--out",
        str(_unwritable(tmp) / "o.parquet"),
    ],  # fmt: skip
    "data without an action": lambda tmp, fx: ["data"],
}


def _listing(*roots: Path) -> set[str]:
    out: set[str] = set()
    for root in roots:
        if root.is_dir():
            out |= {str(p) for p in root.rglob("*")}
    return out


def check_one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; assert exit 2 with exactly one ``raymeta: error:`` line on stderr."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own exit, until main turns it into a return
        rc = exc.code if isinstance(exc.code, int) else 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("raymeta: error:"), err
    assert "Traceback" not in err
    return lines[0]


CASES = {**{f"sweep: {k}": v for k, v in SWEEP_CASES.items()}}
CASES |= {f"report: {k}": v for k, v in REPORT_CASES.items()}
CASES |= {f"data: {k}": v for k, v in DATA_CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: str, tmp_path: Path, fx: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    argv = CASES[case](work, fx)
    before = _listing(work, *fx.values())
    check_one_line_error(argv, capsys)
    assert _listing(work, *fx.values()) == before  # nothing new: no --out, no plots, no parts


def test_duplicates_are_refused_by_every_reader(tmp_path: Path, fx: dict[str, Path]) -> None:
    """The same check guards ``ParquetFamily`` (meta-train / tune / sweep), not just validate."""
    from raymeta.errors import DataError
    from raymeta.tasks.parquet import ParquetFamily

    d = Path(_dup_dir(tmp_path, fx))
    with pytest.raises(DataError, match="identical rows in .*a.parquet and .*b.parquet"):
        ParquetFamily(str(d), shots=5, queries=5)
    # a task whose splits live in different files is not a duplicate
    t = pq.read_table(fx["sin"])
    split = np.asarray(t["split"].to_pylist())
    pq.write_table(t.filter(pa.array(split == "train")), d / "a.parquet")
    pq.write_table(t.filter(pa.array(split != "train")), d / "b.parquet")
    fam = ParquetFamily(str(d), shots=5, queries=5)
    assert fam.n_tasks("train") + fam.n_tasks("val") + fam.n_tasks("test") == 30


def test_remote_unit_errors_are_reduced_to_their_own_line(ray_session: None) -> None:
    """A unit that fails inside a real Ray task becomes one line naming its key and cause."""
    import ray

    from raymeta.errors import ConfigError, RaymetaError
    from raymeta.orchestration.sweep.backends import unit_error as _unit_error

    @ray.remote(max_retries=0)
    def boom(kind: str) -> None:
        if kind == "config":
            raise ConfigError("sinusoid: task index must be >= 0, got -1")
        raise ValueError("expected non-negative integer\nsecond line")

    for kind, needle in (
        ("config", "sweep unit k/1: sinusoid: task index must be >= 0, got -1"),
        ("value", "sweep unit k/1 failed (ValueError: expected non-negative integer)"),
    ):
        with pytest.raises(ray.exceptions.RayTaskError) as info:
            ray.get(boom.remote(kind))
        err = _unit_error(info.value, "k/1")
        assert isinstance(err, RaymetaError)
        assert str(err).startswith(needle) and "\n" not in str(err)
