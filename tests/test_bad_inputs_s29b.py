"""Bad inputs of round 29 (second batch): one ``raymeta: error:`` line and exit 2 before any
work, raymeta's own errors from the Python API, and good inputs not refused.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). No
case starts Ray: each is refused before any work, and the work a command would start is
replaced, where a regression could reach it, by a function that fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

import raymeta
from raymeta.errors import ConfigError


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the bad input was not refused before the work started")


# ------------------------------------------- 1: load_sweep / sweep check their argument types
@pytest.mark.parametrize("path", [3, None, b"s.yaml", ""])
def test_load_sweep_refuses_a_non_path(path: Any) -> None:
    """Was: ``load_sweep(3)`` a bare TypeError from ``pathlib`` (expected str, bytes or
    os.PathLike object)."""
    with pytest.raises(ConfigError, match="^sweep file must be a"):
        raymeta.load_sweep(path)


def test_parse_sweep_refuses_a_non_path_base(ckpt_dir: Path) -> None:
    with pytest.raises(ConfigError, match="^sweep: base must be a path"):
        raymeta.parse_sweep({"meta": [ckpt_dir.name], "strategies": ["auto"]}, base=3)


def test_load_sweep_takes_str_and_path(ckpt_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f"meta: [{ckpt_dir}]\nstrategies: [auto]\ntasks: 2\n")
    assert raymeta.load_sweep(f) == raymeta.load_sweep(str(f))
    assert raymeta.load_sweep(f).tasks == (0, 1)


def _sweep_cfg(ckpt_dir: Path) -> Any:
    return raymeta.parse_sweep({"meta": [str(ckpt_dir)], "strategies": ["auto"], "tasks": 1})


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        # was: AttributeError: 'int' object has no attribute 'meta' (after the output lock)
        ({"cfg": 3}, "cfg must be a SweepConfig (from raymeta.load_sweep"),
        ({"cfg": {"name": "x"}}, "cfg must be a SweepConfig"),
        # was: TypeError: expected str, bytes or os.PathLike object, not int
        ({"out": 3}, "out must be a path"),
        ({"out": None}, "out must be a path"),
        ({"out": ""}, "out must be a non-empty path"),
        ({"progress": "no"}, "progress must be true or false"),
        ({"progress": 0}, "progress must be true or false"),
        ({"address": 6379}, "address must be HOST:PORT, auto or None"),
        ({"address": " "}, "address must be HOST:PORT, auto or None"),
        # was: TypeError: '>=' not supported between instances of 'str' and 'int'
        ({"flush_s": "1"}, "flush_s must be seconds >= 0"),
        ({"local": "yes"}, "local must be true or false"),
    ],
)
def test_sweep_api_refuses_wrong_types(
    kwargs: dict[str, Any],
    needle: str,
    ckpt_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import raymeta.orchestration.sweep.run as sweep_run

    monkeypatch.setattr(sweep_run, "check_sweep", _no_work)
    args: dict[str, Any] = {"cfg": _sweep_cfg(ckpt_dir), "out": tmp_path / "results"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        raymeta.sweep(**args)
    assert not (tmp_path / "results").exists()


# ------------------------------------------- 2: sweep --address checked as every command's is
@pytest.mark.parametrize(
    ("address", "needle"),
    [
        # was: accepted, then 'cannot parse Ray address' once the sweep file and every
        # meta-checkpoint had been read and checked
        ("no-port", "expected HOST:PORT, ray://HOST:PORT or auto, got 'no-port'"),
        ("head:99999", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("ray://10.0.0.1:10001", "ray:// (Ray Client) addresses are not supported"),
    ],
)
def test_sweep_address_is_checked_at_parse_time(
    address: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import raymeta.orchestration.sweep.config as sweep_config

    mp = pytest.MonkeyPatch()
    mp.setattr(sweep_config, "load_sweep", _no_work)
    try:
        argv = ["sweep", "s.yaml", "--out", "o", "--address", address]
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line.startswith("raymeta: error: sweep: argument --address: "), line
    assert needle in line, line


def test_sweep_address_from_config_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("address: nope\n")
    line = run_bad(["sweep", "s.yaml", "--out", "o", "--config", "c.yaml"], tmp_path, capsys)
    assert "nope" in line and "HOST:PORT" in line, line


def test_sweep_good_addresses_still_parse() -> None:
    from raymeta.cli.main import build_parser

    parser = build_parser()
    for address in ("auto", "10.0.0.1:6379", " head-1.example:6379", "[::1]:6379"):
        args = parser.parse_args(["sweep", "s.yaml", "--out", "o", "--address", address])
        assert args.address == address.strip()


def test_sweep_local_with_a_good_address_keeps_its_wording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "s.yaml", "--out", "o", "--local", "--address", "10.0.0.1:6379"]
    line = run_bad(argv, tmp_path, capsys)
    assert "--local runs the sweep on this machine without Ray and cannot join --address" in line


# ---------------------------------- 3: meta-train --local --address (the address was ignored)
@pytest.mark.parametrize("address", ["10.0.0.1:6379", "auto"])
def test_meta_train_local_with_address_is_refused(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: the run meta-trained in this process and never joined the cluster, without a
    word. Refused like ``sweep --local --address``, before the config is built."""
    import raymeta.cli.meta_train
    import raymeta.orchestration.meta_train.local

    mp = pytest.MonkeyPatch()
    mp.setattr(raymeta.cli.meta_train, "build_config", _no_work)
    mp.setattr(raymeta.orchestration.meta_train.local, "run_local_meta_train", _no_work)
    try:
        argv = ["meta-train", "--local", "--address", address, "--out", "ck", "--steps", "1"]
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line == (
        f"raymeta: error: --local meta-trains in this process without Ray and cannot join "
        f"--address {address}: give one of them"
    )


def test_meta_train_local_address_from_config_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("local: true\naddress: 10.0.0.1:6379\n")
    argv = ["meta-train", "--config", "c.yaml", "--out", "ck", "--steps", "1"]
    assert "cannot join --address 10.0.0.1:6379" in run_bad(argv, tmp_path, capsys)


def test_local_meta_training_api_takes_no_address() -> None:
    """The Python API's in-process meta-training (``raymeta.meta_train``, and the CLI's
    ``run_local_meta_train``) has no address to ignore: only ``run_meta_train`` joins a
    cluster, and it always runs on Ray."""
    import inspect

    from raymeta.orchestration.meta_train.local import run_local_meta_train

    for fn in (raymeta.meta_train, run_local_meta_train):
        assert "address" not in inspect.signature(fn).parameters
    assert "local" not in inspect.signature(raymeta.run_meta_train).parameters
