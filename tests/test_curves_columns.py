"""``Curves.columns`` (a sweep batch's rows without a dict each) against ``Curves.rows``."""

from __future__ import annotations

import math

import pytest

from raymeta.finetune.curves import ROW_COLUMNS, Curves


@pytest.mark.parametrize("accuracy", [False, True], ids=["regression", "classification"])
def test_columns_are_the_rows_transposed(accuracy: bool) -> None:
    """Every row of ``rows`` in the same order, ``sweep`` aside: diverged losses as inf,
    accuracies (NaN kept) after their loss, per-member steps, each evaluation's wall time."""
    curves = Curves(
        step=[2, 4, 6],
        spent=[6, 12, 18],
        wall_s=[0.5, 1.25, 2.0],
        loss=[[0.5, math.nan, 2.0], [0.25, math.inf, 1.5], [0.125, 3.0, -math.inf]],
        accuracy=[[0.5, 0.25, 1.0], [0.75, math.nan, 1.0], [1.0, 0.5, 0.0]] if accuracy else None,
        member_steps=[[2, 2, 2], [4, 3, 4], [6, 5, 6]],
    )
    common = {"sweep": "s", "strategy": "meta+fixed-default", "task": 7, "seed": 3}
    rows = curves.rows(common)
    cols = curves.columns(common)
    assert set(cols) == set(ROW_COLUMNS)
    assert all(len(v) == len(rows) for v in cols.values())
    assert len(rows) == 9 * (2 if accuracy else 1)
    for i, row in enumerate(rows):
        for c in ROW_COLUMNS:
            got, want = cols[c][i], row[c]
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got), (i, c)
            else:
                assert got == want and type(got) is type(want), (i, c, got, want)
