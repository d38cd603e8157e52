"""Where each member of a ``Population`` lives in its stacked tensors: rows kept grouped by the
trainer's member kind across ``train`` calls.

Why: ``step.PopulationTrainer.train`` works on its members grouped by kind (optimizer, then
adapt, then full or minibatch: ``step.member_keys``), each group a run of rows. A population
kept in member order is gathered into that order and scattered back on every call: for a
sweep batch of mixed strategies that was ~9% of its time (BENCHMARKS.md, issue 17 tenth pass).
A population that keeps its rows grouped pays only when a member changes kind (a PBT exploit
copying another kind's config), and then moves only the rows that must move.

Which row holds which member is the layout's business alone: the population maps member
indices to rows (``pos``) wherever it reads or writes a member, and everything outside it
sees members in their own order. Row order never changes a member's numbers: each member's
minibatches are drawn from its own seed and step, whatever its row.
"""

from __future__ import annotations

import torch


class RowLayout:
    """A permutation of ``n`` members over ``n`` rows: ``rows[r]`` is the member at row ``r``,
    ``pos[m]`` the row of member ``m`` (``None`` for both while every member is at its own
    row)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None

    def reset(self) -> None:
        """Every member back at its own row (the caller has put its tensors in member order)."""
        self.rows = self.pos = None

    def arrange(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Reorder the rows so that their members' ``keys`` (one int per member, in member
        order, on the CPU) ascend, moving only the rows that are in another key's run. Returns
        the moves ``(dst, src)``, row indices to apply to every tensor the rows index as
        ``t.index_copy_(0, dst, t.index_select(0, src))`` (each source read before any row is
        written), or ``None`` when no row moves.

        Rows already in their key's run stay; the misplaced ones, taken in row order, fill
        the slots of their key's run that hold another key's member, in row order: a permutation
        (the misplaced rows and the slots they fill are the same set) that moves the fewest
        rows."""
        if keys.numel() != self.n:
            raise ValueError(f"{keys.numel()} keys for a layout of {self.n} members")
        have = keys if self.rows is None else keys[self.rows]  # each row's member's key
        want = torch.sort(have).values  # the key each row's slot should hold
        wrong = torch.nonzero(have != want).flatten()
        if wrong.numel() == 0:
            return None
        # slots sorted by the key they want and rows by the key they hold: both by key, then by
        # row, so the k-th misplaced row of a key fills the k-th slot of that key's run
        dst = wrong[torch.argsort(want[wrong], stable=True)]
        src = wrong[torch.argsort(have[wrong], stable=True)]
        rows = torch.arange(self.n) if self.rows is None else self.rows.clone()
        rows[dst] = rows[src]
        if torch.equal(rows, torch.arange(self.n)):
            self.reset()
        else:
            self.rows = rows
            self.pos = torch.empty_like(rows)
            self.pos[rows] = torch.arange(self.n)
        return dst, src
