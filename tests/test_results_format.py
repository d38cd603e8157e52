"""Results datasets on disk (schema 2): pandas, pyarrow and Ray Data read them in one line, the
hyperparameters are a typed struct equal to the fine-tuning vocabulary, versions live in part
footers and the marker, batched parts list their keys, and schema-1 datasets still read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymeta.errors import ConfigError, DataError
from raymeta.finetune.curves import final_rows, val_rows
from raymeta.finetune.hparams import HPARAMS
from raymeta.results import SCHEMA, ResultSink, make_row, read_results
from raymeta.results.reader import dataset_versions
from raymeta.results.schema import HPARAM_TYPES, HPARAMS_TYPE, VERSIONS_KEY, versions_json
from raymeta.results.sink import part_keys, part_name
from raymeta.results.synthetic import synthetic_rows

FULL = {"lr": 0.03, "optimizer": "adam", "weight_decay": 1e-4, "steps": 40, "batch_size": 8}
FULL |= {"adapt": "head", "model": "mlp"}


def test_hparams_struct_is_the_vocabulary() -> None:
    """The results layer declares the struct without importing torch; it must equal HPARAMS."""
    kinds = {"float": pa.float64(), "int": pa.int64(), "choice": pa.string(), "name": pa.string()}
    assert list(HPARAM_TYPES) == [h.name for h in HPARAMS]
    assert {h.name: kinds[h.kind] for h in HPARAMS} == HPARAM_TYPES
    assert all(f.nullable for f in HPARAMS_TYPE)


def _tune_dataset(root: Path) -> int:
    """Rows written the way ``raymeta tune``'s write_outputs writes them: val_rows per trial
    under ``TASK/STRATEGY/SEED/TRIAL`` and final_rows under ``.../final``, one append each."""
    sink = ResultSink(root, "tune-run")
    common = {"sweep": "tune-run", "strategy": "meta+learned+pbt", "task": "sinusoid-2", "seed": 1}
    n = 0
    for t, hp in enumerate(({"lr": 0.1, "optimizer": "sgd"}, FULL)):
        rows = [
            r for s in (5, 10) for r in val_rows(common, f"t{t}", s, {"val_loss": 1 / s}, hp, s)
        ]
        assert sink.append(rows, key=f"sinusoid-2/meta+learned+pbt/1/t{t}")
        n += len(rows)
    final = final_rows(common, "t1/m0", 20, {"test_loss": 0.2}, FULL, 3.0)
    assert sink.append(final, key="sinusoid-2/meta+learned+pbt/1/final")
    return n + len(final)


def _sweep_dataset(root: Path) -> int:
    """Two batched parts (units of different strategies, so different hparams present) and a
    hidden temp file a killed writer leaves."""
    rows = synthetic_rows(sweep="sw", tasks=("a", "b"), seeds=(0,))
    units: dict[str, list[dict]] = {}
    for r in rows:
        units.setdefault(f"{r['strategy']}/{r['task']}/{r['seed']}", []).append(r)
    keys = sorted(units)
    units[keys[0]] = [{**r, "hparams": FULL} for r in units[keys[0]]]  # every field set
    sink = ResultSink(root, "sw")
    assert sink.append_many({k: units[k] for k in keys[:3]}) == set(keys[:3])
    assert sink.append_many({k: units[k] for k in keys[2:]}) == set(keys[3:])  # keys[2] is done
    (sink.dir / f".{part_name('x')}.123-abc.tmp").write_bytes(b"PAR1 truncated")
    parts = sorted(sink.dir.glob("part-*.parquet"))
    assert len(parts) == 2 and sorted(k for p in parts for k, _ in part_keys(p)) == keys
    return len(rows)


def _ids(t: pa.Table) -> list[tuple]:
    cols = [t[c].to_pylist() for c in ("task", "trial", "step", "metric")]
    return sorted(zip(*cols, strict=True))


def test_pandas_and_pyarrow_one_liners_on_sink_written_tune_and_sweep_datasets(
    tmp_path: Path,
) -> None:
    import pandas as pd

    for name, make in (("tune", _tune_dataset), ("sweep", _sweep_dataset)):
        root = tmp_path / name
        n = make(root)
        ours = read_results(root)
        assert ours.num_rows == n and ours.schema.equals(SCHEMA, check_metadata=False)
        table = pq.read_table(root)
        frame = pd.read_parquet(root)
        assert table.num_rows == len(frame) == n, name
        assert set(frame["sweep"].astype(str)) == {ours["sweep"][0].as_py()}
        assert table.schema.field("hparams").type == HPARAMS_TYPE
        assert _ids(table) == _ids(ours), name
        flat = table.flatten()  # typed columns hparams.lr, hparams.steps, ...
        assert flat.schema.field("hparams.steps").type == pa.int64()
        assert flat.schema.field("hparams.optimizer").type == pa.string()
        model = ours["hparams"].combine_chunks().field("model")
        full = ours.filter(pa.compute.equal(model, "mlp"))
        assert full.num_rows > 0 and full["hparams"][0].as_py() == FULL
        partial = [h for h in ours["hparams"].to_pylist() if h["model"] is None]
        assert partial and all(h["weight_decay"] is None for h in partial)


@pytest.mark.slow  # ~40 s on 2 cores: Ray Data's executor, not the read, dominates
def test_ray_data_one_liner_on_tune_and_sweep_datasets(ray_session: None, tmp_path: Path) -> None:
    import ray

    for name, make in (("tune", _tune_dataset), ("sweep", _sweep_dataset)):
        root = tmp_path / name
        n = make(root)
        data = ray.data.read_parquet(str(root))  # _schema.json and the temp file are skipped
        assert data.schema().names == [*SCHEMA.names[1:], "sweep"]
        frame = data.to_pandas()
        assert len(frame) == n and set(frame["sweep"]) == {read_results(root)["sweep"][0].as_py()}
        assert isinstance(frame["hparams"].iloc[0], dict)


def test_versions_are_per_dataset_not_per_row(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, "s")
    sink.append(synthetic_rows(sweep="s", tasks=("a",), seeds=(0,)), key="k1")
    sink.append([], key="k2")
    assert "versions" not in read_results(tmp_path).column_names
    record = json.loads(versions_json())
    assert dataset_versions(tmp_path) == [record]  # once, not once per append
    for part in sink.dir.glob("part-*.parquet"):
        assert json.loads(pq.read_schema(part).metadata[VERSIONS_KEY]) == record


def _write_v1(root: Path) -> None:
    """A schema-1 dataset as raymeta wrote it: sweep column, JSON hparams, per-row versions."""
    schema = pa.schema(
        [(c, pa.string()) for c in ("sweep", "strategy", "task")]
        + [("seed", pa.int64()), ("trial", pa.string()), ("step", pa.int64())]
        + [("metric", pa.string()), ("value", pa.float64()), ("hparams", pa.string())]
        + [("wall_s", pa.float64()), ("versions", pa.string())],
        metadata={b"raymeta.results.schema_version": b"1"},
    )
    (root / "sweep=old").mkdir(parents=True)
    (root / "_schema.json").write_text(json.dumps({"schema_version": 1}))
    for key, hp in (("u1", '{"lr": 0.5, "steps": 3}'), ("u2", "{}")):
        row = dict(sweep="old", strategy=key, task="t", seed=0, trial="m0", step=3)
        row |= dict(metric="test_loss", value=0.5, hparams=hp, wall_s=1.0, versions="{}")
        table = pa.Table.from_pylist([row], schema=schema)
        meta = {**schema.metadata, b"raymeta.results.key": key.encode()}
        pq.write_table(table.replace_schema_metadata(meta), root / "sweep=old" / part_name(key))


def test_schema_1_dataset_reads_converted_and_refuses_appends(tmp_path: Path) -> None:
    _write_v1(tmp_path)
    table = read_results(tmp_path, sweep="old")
    assert table.schema.equals(SCHEMA, check_metadata=False) and table.num_rows == 2
    hp = dict(zip(table["strategy"].to_pylist(), table["hparams"].to_pylist(), strict=True))
    assert hp["u1"]["lr"] == 0.5 and hp["u1"]["steps"] == 3 and hp["u2"]["lr"] is None
    with pytest.raises(DataError, match="reads it but appends only to version 2"):
        ResultSink(tmp_path, "old")
    part = tmp_path / "sweep=old" / part_name("u1")
    table = pq.read_table(part)
    bad = table.set_column(8, "hparams", pa.array(['{"momentum": 1}']))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), part)
    with pytest.raises(DataError, match="schema version 1.*'momentum'"):
        read_results(tmp_path)


def test_batched_append_skips_done_keys_and_needs_one_sweep(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, "s")
    row = make_row(
        sweep="s", strategy="a", task="t", seed=0, trial="m0", step=1, metric="m", value=1.0,
        hparams=None, wall_s=0.0,
    )  # fmt: skip
    assert sink.append_many({"a": [row], "b": []}) == {"a", "b"}
    assert sink.append_many({"a": [row], "b": [row]}) == set()  # all done: nothing written
    assert len(list(sink.dir.glob("part-*.parquet"))) == 1
    assert ResultSink(tmp_path, "s").done_keys() == {"a", "b"}
    with pytest.raises(ConfigError, match="belongs to sweep 'x'"):
        sink.append_many({"c": [{**row, "sweep": "x"}]})
    with pytest.raises(ConfigError, match="non-empty"):
        sink.append_many({"": [row]})
