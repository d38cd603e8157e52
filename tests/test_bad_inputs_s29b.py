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
