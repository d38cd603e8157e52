"""The compiled population step (``PopulationTrainer(compile=True)``, ``torch.compile`` of the
general step with ``torch.func.grad``) gives the eager step's numbers (float64).

Compiling takes tens of seconds on CPU, so these tests are ``slow``; the eager step they are
compared with is checked against the looped ``torch.optim`` reference in the default run
(tests/test_population_mixed.py), and one member here is checked against that reference too.
"""

from __future__ import annotations

import pytest
import test_population_mixed as mixed  # tests/ is on sys.path (rootdir-less test modules)
import torch

from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.step import GENERAL, PopulationTrainer

pytestmark = pytest.mark.slow


def _compiled(trainer: PopulationTrainer) -> PopulationTrainer:
    return PopulationTrainer(trainer.model, trainer.kind, compile=True)


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_compiled_step_equals_eager_step(per_member: bool) -> None:
    """Every member kind (SGD / Adam, weight decay, minibatches, head-only, members that stop
    mid-call): the compiled step equals the eager general and grouped paths, moments and step
    counts included, across two calls (state carried), and one member equals the looped
    reference."""
    trainer, state, hp, x, y = mixed._setup(mixed.MIXED, per_member)
    comp = _compiled(trainer)
    half = comp.train(state, hp, x, y, 3, per_member_data=per_member)
    out = comp.train(half, hp, x, y, mixed.N_STEPS - 3, per_member_data=per_member)
    general = trainer.train(state, hp, x, y, mixed.N_STEPS, per_member, plan=GENERAL)
    mixed._close(out, general)
    mixed._close(out, trainer.train(state, hp, x, y, mixed.N_STEPS, per_member))
    assert len(comp._compiled) == 1  # one compiled function, reused by the second call
    i = 2  # Adam, minibatch, head-only
    init = {k: v[i] for k, v in state.params.items()}
    xi, yi = (x[i], y[i]) if per_member else (x, y)
    cfg = mixed.MIXED[i]
    want = ref_train_member(trainer.model, "regression", init, cfg, mixed.SEEDS[i], xi, yi, 8)
    for k, w in want.items():
        torch.testing.assert_close(out.params[k][i], w, rtol=1e-9, atol=1e-11)


def test_compiled_step_trains_a_subset_of_members() -> None:
    """``members=`` (what PBT's exploit and sweeps' refits use) through the compiled step."""
    trainer, state, hp, x, y = mixed._setup(mixed.MIXED, True)
    some = torch.tensor([1, 4, 8])
    out = _compiled(trainer).train(state, hp, x, y, 5, True, members=some)
    mixed._close(out, trainer.train(state, hp, x, y, 5, True, plan=GENERAL, members=some))
