"""The pandas-free Arrow builders (``raymeta.results.columns``) against ``pa.array`` itself,
and the keyed tables a sweep's workers hand its driver (``raymeta.results.sink.KeyedRows``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.errors import ConfigError
from raymeta.results import ResultSink, read_results
from raymeta.results.columns import column
from raymeta.results.schema import HPARAMS_TYPE, make_row, rows_to_table
from raymeta.results.sink import KeyedRows

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(
    strings=st.lists(st.text(), max_size=20),
    ints=st.lists(INT64, max_size=20),
    floats=st.lists(st.one_of(FLOATS, st.integers(-(2**53), 2**53)), max_size=20),
    nullable=st.lists(st.one_of(st.none(), INT64), max_size=20),
)
def test_columns_equal_pa_array(
    strings: list[str], ints: list[int], floats: list[float], nullable: list[int | None]
) -> None:
    """Every kind of column equals what ``pa.array`` builds from the same values (NaN bit
    patterns aside: compared as written by both)."""
    assert column(strings, pa.string()).equals(pa.array(strings, type=pa.string()))
    assert column(ints, pa.int64()).equals(pa.array(ints, type=pa.int64()))
    got, want = column(floats, pa.float64()), pa.array(floats, type=pa.float64())
    assert got.to_pylist() == pytest.approx(want.to_pylist(), nan_ok=True)
    assert column(nullable, pa.int64(), True).equals(pa.array(nullable, type=pa.int64()))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "lr": st.floats(allow_nan=False),
                "optimizer": st.sampled_from(["sgd", "adam"]),
                "steps": st.integers(0, 10**6),
                "model": st.text(max_size=5),
            },
        ),
        max_size=10,
    )
)
def test_struct_column_equals_pa_array(values: list[dict[str, object]]) -> None:
    assert column(values, HPARAMS_TYPE).equals(pa.array(values, type=HPARAMS_TYPE))


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1.5], pa.int64()),  # never truncated into an integer column
        ([True], pa.int64()),
        ([True], pa.float64()),
        (["1"], pa.float64()),
        ([2**63], pa.int64()),
        ([b"x"], pa.string()),
        ([None], pa.string()),  # not nullable
        ([float("nan")], pa.string()),  # pyarrow's builder would make it a null
        ([1], HPARAMS_TYPE),
        ([{"lr": 0.1, "bogus": 1}], HPARAMS_TYPE),  # an unknown field is never dropped
        ([2**53 + 1], pa.float64()),  # not exactly a float, as pa.array refuses
    ],
)
def test_wrong_types_are_refused(values: list[object], kind: pa.DataType) -> None:
    with pytest.raises(TypeError):
        column(values, kind)


def _row(sweep: str = "s", step: int = 0, **kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(
        sweep=sweep,
        strategy="a",
        task="t0",
        seed=1,
        trial="m0",
        step=step,
        metric="val_loss",
        value=0.5,
        hparams={"lr": 0.1, "optimizer": "adam"},
        wall_s=0.25,
    )
    base.update(kw)
    return make_row(**base)  # type: ignore[arg-type]


def test_rows_to_table_refuses_a_wrong_type_in_one_line() -> None:
    row = _row()
    row["seed"] = 1.5  # a row built by hand, not by make_row
    with pytest.raises(ConfigError, match="wrong type: column 'seed'"):
        rows_to_table([row])


def test_keyed_rows_round_trip_and_exactly_once(tmp_path: Path) -> None:
    """``KeyedRows.rows`` gives back ``make_row``'s dicts; ``append_keyed`` publishes only the
    keys not yet published, in one part, and the dataset reads back the same rows."""
    batch = {f"k{i}": [_row(step=s, task=f"t{i}") for s in range(i + 1)] for i in range(4)}
    keyed = KeyedRows.of("s", batch)
    assert keyed.rows() == batch
    assert len(keyed) == 4
    sink = ResultSink(tmp_path, "s")
    assert sink.append_many({"k1": batch["k1"]}) == {"k1"}
    assert sink.append_keyed([keyed]) == {"k0", "k2", "k3"}
    assert sink.append_keyed([keyed]) == set()
    assert len(list((tmp_path / "sweep=s").glob("part-*.parquet"))) == 2
    table = read_results(tmp_path, sweep="s")
    assert table.num_rows == sum(len(r) for r in batch.values())
    assert sorted(table.column("task").to_pylist()) == sorted(
        r["task"] for rows in batch.values() for r in rows
    )
    with pytest.raises(ConfigError, match="belong to sweep 'other'"):
        sink.append_keyed([KeyedRows.of("other", {"k9": [_row(sweep="other")]})])


def test_writing_results_does_not_import_pandas(tmp_path: Path) -> None:
    """A sweep's driver converts and writes rows without importing pandas (0.5 s of CPU that
    ``pa.table`` would spend on its first call, in the middle of a sweep)."""
    code = (
        "import sys\n"
        "from raymeta.results import ResultSink\n"
        "from raymeta.results.schema import make_row\n"
        "row = make_row(sweep='s', strategy='a', task='t', seed=1, trial='m0', step=0,"
        " metric='val_loss', value=0.5, hparams={'lr': 0.1}, wall_s=0.0)\n"
        f"ResultSink({str(tmp_path)!r}, 's').append_many({{'k': [row]}})\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ([("a", 1), ("a", 1)], "distinct"),
        ([("", 2)], "non-empty string"),
        ([("a", 3), ("b", -1)], ">= 0"),
        ([("a", 1)], "do not count"),
    ],
)
def test_keyed_rows_of_columns_refuses_bad_keys(keys: list[tuple[str, int]], match: str) -> None:
    """The keys of a worker's table are checked as ``append_many`` checks a batch's: a
    duplicate would drop one key's rows, a negative count would mark a key done without them."""
    cols = {c: [] for c in KeyedRows.of("s", {"k": [_row()]}).table.column_names}
    row = {k: v for k, v in _row().items() if k != "sweep"}
    for c in cols:
        cols[c] = [row[c], row[c]]
    with pytest.raises(ConfigError, match=match):
        KeyedRows.of_columns("s", cols, keys)
    assert KeyedRows.of_columns("s", cols, [("a", 2)]).rows()["a"][0] == _row()
