"""``Lockstep``: which Adam rows sit each step of a call out, against the step rule itself.

A member trains step ``i`` of a call while its step count (``t + i`` for a member with steps
left, all of which share ``t``) is below its limit; every other member sits the step out, and
the fused Adam update must put exactly those rows back (``PopulationTrainer._fused_adam``).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.finetune.lockstep import Lockstep

members = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(members=members, n_steps=st.integers(1, 10), s=st.integers(0, 3), cut=st.integers(0, 12))
def test_sitting_out_is_the_step_rule(
    members: list[tuple[int, int]], n_steps: int, s: int, cut: int
) -> None:
    t = torch.tensor([a for a, _ in members], dtype=torch.long)
    limit = torch.tensor([b for _, b in members], dtype=torch.long)
    lock = Lockstep.of(t, limit, n_steps)
    active = [a for a, b in members if a < b]
    if not active or len(set(active)) > 1:
        assert lock is None
        return
    assert lock is not None and lock.first == active[0]
    n = len(members)
    # two parameters' Adam slices of the working rows (whose Adam rows start at s): one of
    # every Adam row, one of the rows from ``cut`` on (a body parameter's adapt-all members)
    lo = s + min(cut, n)
    slices = [(s, s + n), (lo, s + n)]
    for i in range(n_steps):
        out = [i_ for i_, (a, b) in enumerate(members) if not (a < b and lock.first + i < b)]
        got = lock.sitting_out(i, s, slices)
        if not out:
            assert got is None
            continue
        assert got is not None
        assert sorted(got[0].tolist()) == out
        assert sorted(got[1].tolist()) == [r + s - lo for r in out if r + s >= lo]
