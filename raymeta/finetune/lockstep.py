"""Adam members in lockstep, and which of them sit each step out.

``torch._fused_adam_`` takes one step count per tensor, and a population's Adam rows are slices
of one tensor per parameter, so the fused update applies when the Adam members with steps left
share a step count. They do in a sweep, a tune trial and a priors fit, whose members start
together and train together (PBT copies the counter with the weights). In a priors fit, though,
each config stops at its own ``steps``: members stop in the middle of a call. The kernel still
updates their rows, so the caller puts back their moments and zeroes their update
(``PopulationTrainer._fused_adam``); ``Lockstep`` says which rows that is at each step of the
call. Without it such a call fell back to the per-member update, eight passes over the weights
and moments where the kernel makes one.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch


@dataclass
class Lockstep:
    """``first``: the active Adam members' common step count when the call starts. ``rows``:
    the Adam rows (0 = the first Adam row) of members that stop before the call ends, or had
    stopped, ordered by ``at``: the first step of the call each one sits out (0: all of them)."""

    first: int
    rows: torch.Tensor
    at: list[int]
    _cache: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(t: torch.Tensor, limit: torch.Tensor, n_steps: int) -> Lockstep | None:
        """From the Adam members' step counts ``t`` and limits; None when the members with
        steps left are on different step counts, or none has steps left. A few host reads."""
        if t.numel() == 0:
            return None
        on = t < limit
        if not bool(on.any()):
            return None
        first = int(t[on][0])
        if bool((t[on] != first).any()):
            return None
        stops = ~on | (limit < first + n_steps)
        if not bool(stops.any()):
            return Lockstep(first, torch.empty(0, dtype=torch.long), [])
        rows = torch.nonzero(stops).flatten()
        at = torch.where(on[rows], limit[rows] - first, 0)
        order = torch.argsort(at, stable=True)
        return Lockstep(first, rows[order].cpu(), at[order].tolist())

    def sitting_out(
        self, i: int, s: int, slices: list[tuple[int, int]]
    ) -> list[torch.Tensor] | None:
        """At step ``i`` of the call, for each parameter's Adam slice ``[lo, hi)`` of the
        working rows (whose Adam rows start at ``s``), the indices within the slice of the
        members sitting the step out; None when every Adam member trains this step."""
        count = bisect.bisect_right(self.at, i)
        if count == 0:
            return None
        key = (count, s)
        if key not in self._cache:
            working = self.rows[:count] + s
            self._cache[key] = [working[working >= lo] - lo for lo, _ in slices]
        return self._cache[key]
