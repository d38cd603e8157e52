"""Property-based fuzzing of every subcommand (issue #12): whatever the arguments, config file
or Parquet task file, ``raymeta`` exits 0, or exits 2 with exactly one ``raymeta: error:`` line
on stderr, never a traceback, and on exit 2 leaves nothing new in the output directory.

Runs in-process through ``main(argv)``; no example starts Ray or real training: the slow
commands (meta-train, priors fit, tune, sweep) always carry one value that is refused (a
"poison": a missing checkpoint, ``--steps 0``, ``fixed_steps: 0``) after the fuzzed ones, and
meta-train always runs ``--local``. An alarm turns a hang into a failing example.

Profiles: ``ci`` (default, ~40 examples a property) and ``long`` (``HYPOTHESIS_PROFILE=long``,
thousands, for benchmarks).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymeta.cli.main import main

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HANG_S = 60  # an example running longer than this is a hang

# ---------------------------------------------------------------- shared fixtures (module)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ckpt_dir: Path) -> dict[str, Path]:
    from raymeta.results import ResultSink
    from raymeta.results.synthetic import synthetic_rows

    root = tmp_path_factory.mktemp("fuzz_world")
    sin = root / "sin.parquet"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["data", "make-sinusoid", str(sin), "--tasks", "10", "--test-size", "5"]) == 0
    res = root / "results"
    ResultSink(res, "demo").append(synthetic_rows(sweep="demo", tasks=("a",), seeds=(0,)), "all")
    afile = root / "file.txt"
    afile.write_text("not a directory\n")
    (root / "emptydir").mkdir()
    return {"meta": ckpt_dir, "sin": sin, "results": res, "file": afile, "dir": root / "emptydir"}


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(*_: Any) -> None:
        raise TimeoutError(f"example ran over {seconds}s (a hang)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _listing(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")} if root.is_dir() else set()


def run_cli(argv: list[str], watch: Path) -> tuple[int, str]:
    """Run ``main(argv)``; assert the property; return (rc, stderr)."""
    before = _listing(watch)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), _alarm(HANG_S):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - the property: nothing escapes main
            tb = traceback.format_exc()
            raise AssertionError(f"{argv!r} raised {type(exc).__name__}:\n{tb}") from None
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert rc in (0, 2), (argv, rc, text)
    assert "Traceback (most recent call last)" not in text, (argv, text)
    if rc == 2:  # a deprecated flag may add its one "raymeta: warning:" line before the error
        lines = [ln for ln in lines if not ln.startswith("raymeta: warning:")]
        assert len(lines) == 1 and lines[0].startswith("raymeta: error:"), (argv, text)
        assert _listing(watch) == before, (argv, "wrote files on exit 2")
    return rc, text


# ---------------------------------------------------------------- value strategies

SPECIAL = ["nan", "inf", "-inf", "-1", "0", "1", "2", "2.5", "1e309", "1000000000", "-0",
           "99999999999999999999", "abc", "true", "", " ", "[1, 2]", "{a: 1}", "0x10", "1_0"]  # fmt: skip
numbers = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(0, 6).map(str),
)
small_valid = st.integers(1, 3).map(str)
odd_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12
)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)
option_pair = st.builds(
    lambda k, v: f"{k}={v}",
    st.sampled_from(
        [
            "shots",
            "ways",
            "widths",
            "val_size",
            "test_size",
            "task_shots",
            "path",
            "queries",
            "replace",
            "n_classes",
            "hidden",
            "bogus",
            "",
        ]
    ),  # fmt: skip
    st.one_of(numbers, st.sampled_from(["[-5]", "[40, 40]", "[abc]", "yes", "[]", "{}"])),
)

PATH_ROLES = ["missing", "file", "dir", "unwritable", "meta", "sin", "results", "nested-missing"]


def path_for(role: str, world: dict[str, Path], work: Path) -> str:
    return {
        "missing": str(work / "missing"),
        "nested-missing": str(work / "a" / "b" / "c"),
        "file": str(world["file"]),
        "dir": str(world["dir"]),
        "unwritable": "/sys/kernel/raymeta-fuzz",
        "meta": str(world["meta"]),
        "sin": str(world["sin"]),
        "results": str(world["results"]),
    }[role]


paths = st.sampled_from(PATH_ROLES)


def flags(spec: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """A random subset of ``spec``'s flags, each with a drawn value (None: a bare switch)."""
    return st.lists(
        st.sampled_from(sorted(spec)).flatmap(lambda f: st.tuples(st.just(f), spec[f])),
        max_size=6,
        unique_by=lambda fv: fv[0],
    )


def argv_of(pairs: list[tuple[str, Any]], world: dict[str, Path], work: Path) -> list[str]:
    out: list[str] = []
    for flag, value in pairs:
        if value is None:
            out.append(flag)
        elif isinstance(value, tuple) and value[0] == "path":
            out += [flag, path_for(value[1], world, work)]
        elif isinstance(value, list):
            for v in value:
                out += [flag, v]
        else:
            out += [flag, str(value)]
    return out


as_path = paths.map(lambda r: ("path", r))
switch = st.none()

# ---------------------------------------------------------------- config files


def config_file(keys: list[str]) -> st.SearchStrategy[str | bytes]:
    mapping = st.dictionaries(st.sampled_from([*keys, "bogus", "1"]) | odd_text, yaml_values,
                              max_size=5)  # fmt: skip
    return st.one_of(
        mapping.map(lambda m: yaml.safe_dump(m, allow_unicode=True)),
        st.binary(max_size=40),
        st.sampled_from(["[1, 2]\n", "a: &a [1]\nb: *a\n", "{{{", "- - - -\n", "\x00\x01"]),
    )


def write_config(work: Path, content: str | bytes) -> str:
    p = work / "config.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return str(p)


# ---------------------------------------------------------------- Parquet task files


@st.composite
def task_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 24))
    cols: dict[str, pa.Array] = {}
    tid_kind = draw(st.sampled_from(["ok", "ok", "odd-bytes", "int", "nulls", "absent"]))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "ü", "t\n1"]), min_size=n, max_size=n))
    if tid_kind == "ok":
        cols["task_id"] = pa.array(names, pa.string())
    elif tid_kind == "odd-bytes":
        raw = pa.array([b"\xff\xfe" + s.encode() for s in names], pa.binary())
        cols["task_id"] = pa.Array.from_buffers(pa.string(), n, raw.buffers())
    elif tid_kind == "int":
        cols["task_id"] = pa.array(range(n), pa.int64())
    elif tid_kind == "nulls":
        cols["task_id"] = pa.array([None if i % 2 else s for i, s in enumerate(names)], pa.string())
    split_pool = draw(
        st.sampled_from([["train", "val", "test"], ["train", "test"], ["dev", "train"]])
    )
    splits = draw(st.lists(st.sampled_from(split_pool), min_size=n, max_size=n))
    if draw(st.booleans()) or n == 0:
        cols["split"] = pa.array(splits, pa.string())
    else:
        cols["split"] = pa.array([None, *splits[1:]], pa.string())
    width = draw(st.integers(0, 3))
    fkind = draw(st.sampled_from(["fixed", "fixed", "list", "ragged", "int", "nan", "f64"]))
    vals = np.asarray(draw(st.lists(st.floats(-1e6, 1e6), min_size=n * width, max_size=n * width)),
                      dtype=np.float64)  # fmt: skip
    if fkind == "nan" and len(vals):
        vals[0] = np.nan
    if fkind in ("fixed", "nan") and width:
        cols["features"] = pa.FixedSizeListArray.from_arrays(pa.array(vals, pa.float32()), width)
    elif fkind == "int":
        cols["features"] = pa.array([[1] * width] * n, pa.list_(pa.int64()))
    else:
        rows = [list(vals[i * width : (i + 1) * width]) for i in range(n)]
        if fkind == "ragged" and n:
            rows[-1] = [*rows[-1], 1.0]
        cols["features"] = pa.array(
            rows, pa.list_(pa.float64() if fkind == "f64" else pa.float32())
        )
    tkind = draw(st.sampled_from(["float", "int", "big-int", "neg", "nan", "str", "absent"]))
    if tkind == "float":
        cols["target"] = pa.array(
            draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n)), pa.float32()
        )
    elif tkind in ("int", "big-int", "neg"):
        hi = {"int": 4, "big-int": 2**40, "neg": 2}[tkind]
        ys = draw(st.lists(st.integers(-1 if tkind == "neg" else 0, hi), min_size=n, max_size=n))
        cols["target"] = pa.array(ys, pa.int64())
    elif tkind == "nan":
        cols["target"] = pa.array([float("nan")] * n, pa.float64())
    elif tkind == "str":
        cols["target"] = pa.array(["x"] * n)
    if draw(st.booleans()):
        cols["meta_split"] = pa.array(draw(st.lists(st.sampled_from(["train", "val", "test", "x"]),
                                                    min_size=n, max_size=n)), pa.string())  # fmt: skip
    return pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int64())})


def write_task_file(work: Path, table: pa.Table, copies: int) -> str:
    if copies == 1:
        pq.write_table(table, work / "tasks.parquet")
        return str(work / "tasks.parquet")
    d = work / "taskdir"
    d.mkdir()
    for i in range(copies):
        pq.write_table(table, d / f"part-{i}.parquet")
    return str(d)


# ---------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_runs")


def new_work(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def finish(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- fast commands: fully random


@given(table=task_tables(), copies=st.sampled_from([1, 1, 2]), one_task=st.booleans())
def test_fuzz_data_validate_task_files(
    world: dict[str, Path], scratch: Path, table: pa.Table, copies: int, one_task: bool
) -> None:
    work = new_work(scratch)
    try:
        path = write_task_file(work, table, copies if not one_task else 1)
        run_cli(["data", "validate", path, *(["--one-task"] if one_task else [])], work)
    finally:
        finish(work)


@given(role=paths, one_task=st.booleans(), cfg=st.none() | config_file(["path", "one_task"]))
def test_fuzz_data_validate_paths(
    world: dict[str, Path], scratch: Path, role: str, one_task: bool, cfg: Any
) -> None:
    work = new_work(scratch)
    try:
        argv = ["data", "validate", path_for(role, world, work)]
        argv += ["--one-task"] if one_task else []
        argv += ["--config", write_config(work, cfg)] if cfg is not None else []
        run_cli(argv, work)
    finally:
        finish(work)


MAKE_FLAGS = {
    "--tasks": st.one_of(numbers, st.integers(3, 30).map(str)),
    "--train-size": st.one_of(numbers, small_valid),
    "--val-size": st.one_of(numbers, small_valid),
    "--test-size": st.one_of(numbers, small_valid),
    "--force": switch,
}


@given(
    out=st.sampled_from(["new", "nested", "file", "dir", "unwritable", "exists"]),
    pairs=flags(MAKE_FLAGS),
)
def test_fuzz_data_make_sinusoid(
    world: dict[str, Path], scratch: Path, out: str, pairs: list[tuple[str, Any]]
) -> None:
    work = new_work(scratch)
    try:
        target = {
            "new": work / "new.parquet",
            "nested": work / "x" / "y.parquet",
            "file": world["file"] / "x.parquet",
            "dir": work,
            "unwritable": Path("/sys/kernel/raymeta-fuzz.parquet"),
            "exists": work / "old.parquet",
        }[out]
        if out == "exists":
            target.write_text("old")
        run_cli(["data", "make-sinusoid", str(target), *argv_of(pairs, world, work)], work)
    finally:
        finish(work)


REPORT_FLAGS = {
    "--sweep": st.one_of(st.sampled_from(["demo", "zzz", "../x", ""]), odd_text),
    "--format": st.sampled_from(["table", "markdown", "json", "xml", ""]),
    "--plots": as_path,
    "--metric": st.sampled_from(["test_loss", "val_loss", "test_accuracy", "nope", ""]),
    "--target": numbers,
}


@given(
    root=st.sampled_from(["results", "results", "missing", "file", "dir", "sin", "corrupt"]),
    pairs=flags(REPORT_FLAGS),
    cfg=st.none() | config_file(list(REPORT_FLAGS)),
)
def test_fuzz_report(
    world: dict[str, Path], scratch: Path, root: str, pairs: list[tuple[str, Any]], cfg: Any
) -> None:
    work = new_work(scratch)
    try:
        if root == "corrupt":
            shutil.copytree(world["results"], work / "res")
            part = next((work / "res" / "sweep=demo").glob("part-*"))
            part.write_bytes(part.read_bytes()[:64])
            where = str(work / "res")
        else:
            where = path_for(root, world, work)
        argv = ["report", where, *argv_of(pairs, world, work)]
        argv += ["--config", write_config(work, cfg)] if cfg is not None else []
        run_cli(argv, work)
    finally:
        finish(work)


@given(role=paths, cfg=st.none() | config_file(["meta"]))
def test_fuzz_priors_show(world: dict[str, Path], scratch: Path, role: str, cfg: Any) -> None:
    work = new_work(scratch)
    try:
        argv = ["priors", "show", "--meta", path_for(role, world, work)]
        argv += ["--config", write_config(work, cfg)] if cfg is not None else []
        run_cli(argv, work)
    finally:
        finish(work)


# ---------------------------------------------------------------- slow commands: always poisoned

SWEEP_KEYS = ["name", "meta", "strategies", "tasks", "seeds", "population", "steps_per_member",
              "budget", "interval", "fixed_steps", "task_options"]  # fmt: skip


@st.composite
def sweep_files(draw: st.DrawFn, meta: str) -> dict[str, Any]:
    good: dict[str, Any] = {
        "name": "fz",
        "meta": [meta],
        "strategies": ["meta+fixed-default"],
        "tasks": 1,
        "seeds": [0],
        "population": 1,
        "steps_per_member": 2,
        "interval": 1,
    }
    for key in draw(st.lists(st.sampled_from(SWEEP_KEYS[:-2] + ["task_options"]), max_size=3)):
        good[key] = draw(
            st.one_of(
                yaml_values,
                st.sampled_from([True, -1, 0, 2**40, 2.5, float("nan"), "abc", [], {}, [True]]),
                st.sampled_from([{"val_size": 0}, {"ways": 1}, {"val_size": "x"}]),
            )
        )
    if draw(st.booleans()):
        good[draw(odd_text)] = draw(yaml_values)
    good["fixed_steps"] = 0  # the poison: checked after every other key but task_options
    return good


@given(data=st.data(), maxc=st.none() | numbers)
def test_fuzz_sweep(world: dict[str, Path], scratch: Path, data: st.DataObject, maxc: Any) -> None:
    work = new_work(scratch)
    try:
        spec = data.draw(sweep_files(str(world["meta"])))
        f = work / "sweep.yaml"
        f.write_text(yaml.safe_dump(spec, allow_unicode=True))
        out = data.draw(st.sampled_from(["new", "file", "unwritable"]))
        out_path = {
            "new": work / "out",
            "file": world["file"],
            "unwritable": Path("/sys/kernel/fz"),
        }
        argv = ["sweep", str(f), "--out", str(out_path[out])]
        argv += ["--max-concurrency", maxc] if maxc is not None else []
        rc, _ = run_cli(argv, work)
        assert rc == 2
    finally:
        finish(work)


META_TRAIN_FLAGS = {
    "--family": st.sampled_from(["sinusoid", "parquet", "nope", "digits", ""]),
    "--family-option": st.lists(option_pair, max_size=3),
    "--model": st.sampled_from(["auto", "mlp", "nope", "", "os:system"]),
    "--model-option": st.lists(option_pair, max_size=3),
    "--algo": st.sampled_from(["maml", "fomaml", "reptile", "metasgd", "anil", "x"]),
    "--inner-steps": numbers,
    "--inner-lr": numbers,
    "--outer-lr": numbers,
    "--meta-batch": numbers,
    "--seed": numbers,
    "--chunk-size": numbers,
    "--val-every": numbers,
    "--val-tasks": numbers,
    "--dtype": st.sampled_from(["float32", "float64", "int8"]),
    "--workers": numbers,
    "--log-every": numbers,
    "--multi-step-loss": numbers,
    "--learn-inner-lr": switch,
    "--outer-schedule": st.sampled_from(["constant", "cosine", "linear", ""]),
    "--outer-lr-min": numbers,
    "--first-order-until": numbers,
    "--rates-lr-scale": numbers,
    "--first-order": switch,
    "--checkpoint-inner": switch,
    "--config": st.just("CONFIG"),
}


def _with_config(argv: list[str], work: Path, cfg: Any) -> list[str]:
    if "CONFIG" in argv:
        argv[argv.index("CONFIG")] = write_config(work, cfg if cfg is not None else "{}")
    return argv


@given(
    pairs=flags(META_TRAIN_FLAGS), out=paths, cfg=st.none() | config_file(list(META_TRAIN_FLAGS))
)
def test_fuzz_meta_train_local(
    world: dict[str, Path], scratch: Path, pairs: list[tuple[str, Any]], out: str, cfg: Any
) -> None:
    work = new_work(scratch)
    try:
        argv = ["meta-train", "--local", *argv_of(pairs, world, work)]
        argv = _with_config(argv, work, cfg)
        argv += ["--out", path_for(out, world, work) if out != "meta" else str(work / "m")]
        argv += ["--steps", "0"]  # the poison: steps must be >= 1
        rc, _ = run_cli(argv, work)
        assert rc == 2
    finally:
        finish(work)


PRIORS_FIT_FLAGS = {
    "--tasks": numbers,
    "--configs": numbers,
    "--seed": numbers,
    "--quantile": numbers,
    "--shrink": numbers,
    "--rounds": numbers,
    "--portfolio": numbers,
    "--max-steps": numbers,
    "--objective": st.sampled_from(["final", "anytime", "x"]),
    "--chunk-size": numbers,
    "--device": st.sampled_from(["cpu", "cuda", "cuda:9", "tpu", ""]),
    "--config": st.just("CONFIG"),
}


@given(pairs=flags(PRIORS_FIT_FLAGS), cfg=st.none() | config_file(list(PRIORS_FIT_FLAGS)))
def test_fuzz_priors_fit(
    world: dict[str, Path], scratch: Path, pairs: list[tuple[str, Any]], cfg: Any
) -> None:
    work = new_work(scratch)
    try:
        argv = ["priors", "fit", *argv_of(pairs, world, work)]
        argv = _with_config(argv, work, cfg)
        argv += ["--meta", str(work / "missing-meta")]  # the poison: no checkpoint
        rc, _ = run_cli(argv, work)
        assert rc == 2
    finally:
        finish(work)


TUNE_FLAGS = {
    "--task": st.one_of(
        st.sampled_from(["sinusoid:0", "sinusoid:-1", "sinusoid:x", "nope:1", ":", "", "TASKFILE"])
    ),
    "--task-option": st.lists(option_pair, max_size=3),
    "--trials": numbers,
    "--population": numbers,
    "--members-per-trial": numbers,
    "--scheduler": st.sampled_from(["pbt", "pb2", "asha", "random", "x"]),
    "--budget": numbers,
    "--interval": numbers,
    "--init": st.sampled_from(["meta", "scratch", "x"]),
    "--prior": st.sampled_from(["learned", "broad", "fixed-default", "x"]),
    "--strategy": st.sampled_from(
        ["meta+learned+pbt", "scratch+broad+asha", "meta+fixed-default", "x"]
    ),
    "--seed": numbers,
    "--max-failures": numbers,
    "--cpus-per-trial": numbers,
    "--gpus-per-trial": numbers,
    "--storage": as_path,
    "--config": st.just("CONFIG"),
}


@given(
    pairs=flags(TUNE_FLAGS),
    cfg=st.none() | config_file(list(TUNE_FLAGS)),
    table=task_tables(),
    out=paths,
)
def test_fuzz_tune(
    world: dict[str, Path],
    scratch: Path,
    pairs: list[tuple[str, Any]],
    cfg: Any,
    table: pa.Table,
    out: str,
) -> None:
    work = new_work(scratch)
    try:
        argv = ["tune", *argv_of(pairs, world, work)]
        argv = _with_config(argv, work, cfg)
        if "TASKFILE" in argv:
            argv[argv.index("TASKFILE")] = write_task_file(work, table, 1)
        argv += ["--out", path_for(out, world, work) if out != "meta" else str(work / "t")]
        argv += ["--meta", str(work / "missing-meta")]  # the poison: no checkpoint
        rc, _ = run_cli(argv, work)
        assert rc == 2
    finally:
        finish(work)
