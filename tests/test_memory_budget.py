"""Memory budgets (``raymeta.memory``): size parsing, the per-member estimate, chunk sizing, and
the ``--memory-budget`` flag's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymeta.cli.main import main
from raymeta.errors import ConfigError
from raymeta.memory import (
    ACTIVATION_COPIES,
    CPU_BUDGET_CAP,
    DATA_COPIES,
    PARAM_COPIES,
    available_bytes,
    chunk_members,
    default_budget,
    member_bytes,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 10**6),
        ("4GB", 4 * 10**9),
        ("4GiB", 4 << 30),
        ("4gib", 4 << 30),
        ("4G", 4 << 30),
        (" 1.5 GB ", 1_500_000_000),
        ("100kb", 100_000),
        ("64KiB", 64 << 10),
        ("2TiB", 2 << 40),
        ("123", 123),
        ("123B", 123),
        (4_000_000_000, 4_000_000_000),  # a config file's integer
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("4 gigs", "cannot read '4 gigs' as a size"),
        ("GB", "cannot read 'GB'"),
        ("-1GB", "cannot read '-1GB'"),
        ("4PB", "cannot read '4PB'"),
        ("", "cannot read ''"),
        (True, "cannot read True"),
        ("0", "less than one byte"),
        ("0.5", "less than one byte"),
        ("1e400", "cannot read"),
    ],
)
def test_parse_size_refuses_what_is_not_a_size(text: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as exc:
        parse_size(text, "--memory-budget")
    assert str(exc.value).startswith("--memory-budget: ") and "\n" not in str(exc.value)


def test_member_bytes_counts_parameter_data_and_activation_copies() -> None:
    assert member_bytes(1000, 0, 0) == PARAM_COPIES * 1000 * 4
    assert member_bytes(1000, 0, 0, element_size=8) == PARAM_COPIES * 1000 * 8
    assert member_bytes(0, 500, 0) == DATA_COPIES * 500
    assert member_bytes(0, 0, 10) == ACTIVATION_COPIES * 10 * 4
    # the MLP 784-128-128-5 on 5-way 5-shot tasks (25 train, 75 val rows of 784)
    n_params = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 5 + 5
    data = (25 + 75) * 784 * 4 + (25 + 75) * 8
    one = member_bytes(n_params, data, 75 * (4 * 128 + 5))
    assert 6 << 20 < one < 12 << 20  # ~9 MiB: 4,096 members are ~38 GiB, not a chunk
    assert member_bytes(0, 0, 0) == 1
    with pytest.raises(ValueError, match="negative"):
        member_bytes(-1, 0, 0)


def test_chunk_members_is_budget_over_per_member() -> None:
    assert chunk_members(1000, 10) == 100
    assert chunk_members(1005, 10) == 100  # whole members only
    assert chunk_members(1000, 10, fixed=500) == 50  # what is taken first is not for members
    assert chunk_members(1000, 10, most=30) == 30  # never more members than there are
    assert chunk_members(5, 10) == 1  # one member at least, even over budget
    assert chunk_members(100, 10, fixed=10**6) == 1
    assert chunk_members(4 * 10**9, 9_700_000) == 412  # the MLP under --memory-budget 4GB
    with pytest.raises(ValueError):
        chunk_members(1000, 0)


def test_default_budget_is_a_share_of_what_is_available() -> None:
    have = available_bytes("cpu")
    assert have > 0
    budget = default_budget("cpu", share=0.5)
    assert 64 << 20 <= budget <= max(64 << 20, min(have, CPU_BUDGET_CAP))
    assert default_budget("cpu", share=1e-12) == 64 << 20  # never below 64 MiB


def test_cli_memory_budget_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, needle in (("4 gigs", "cannot read '4 gigs' as a size"), ("0", "less than one")):
        with pytest.raises(SystemExit) as exc:
            main(["priors", "fit", "--meta", "nowhere", "--memory-budget", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("raymeta: error: priors fit: argument --memory-budget: ")
        assert needle in err and err.count("\n") == 1


def test_config_file_size_may_be_a_yaml_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memory_budget: 5`` in a config file is ``--memory-budget 5`` (5 bytes), as on the
    command line (it was refused as "must be a string"): the run gets past the config to the
    missing checkpoint; a list is still refused."""
    cfg = tmp_path / "fit.yaml"
    for text, needle in (
        ("memory_budget: 5\n", "nowhere"),
        ("memory_budget: 2GiB\n", "nowhere"),
        ("memory_budget: [5]\n", "'memory_budget' takes one value"),
        ("memory_budget: 0\n", "less than one byte"),
    ):
        cfg.write_text(text)
        assert (
            main(["priors", "fit", "--meta", str(tmp_path / "nowhere"), "--config", str(cfg)]) == 2
        )
        err = capsys.readouterr().err
        assert err.startswith("raymeta: error:") and err.count("\n") == 1, err
        assert needle in err and "must be a string" not in err, err
