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


# uniform populations (one optimizer, one adapt: what a compiled trainer compiles), each with
# weight decay, minibatches and members that stop mid-call
ADAM_HEAD = [{**c, "optimizer": "adam", "adapt": "head"} for c in mixed.MIXED]
SGD_ALL = [{k: v for k, v in c.items() if k not in ("optimizer", "adapt")} for c in mixed.MIXED]


@pytest.mark.parametrize("configs", [ADAM_HEAD, SGD_ALL], ids=["adam-head", "sgd-all"])
@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_compiled_step_equals_eager_step(configs: list[dict], per_member: bool) -> None:
    """The compiled step equals the eager general and grouped paths, moments and step counts
    included, across two calls (state carried), and one member equals the looped reference."""
    trainer, state, hp, x, y = mixed._setup(configs, per_member)
    comp = _compiled(trainer)
    half = comp.train(state, hp, x, y, 3, per_member_data=per_member)
    out = comp.train(half, hp, x, y, mixed.N_STEPS - 3, per_member_data=per_member)
    general = trainer.train(state, hp, x, y, mixed.N_STEPS, per_member, plan=GENERAL)
    mixed._close(out, general)
    mixed._close(out, trainer.train(state, hp, x, y, mixed.N_STEPS, per_member))
    assert len(comp._compiled) == 1  # one compiled function, reused by the second call
    i = 2  # a minibatch member
    init = {k: v[i] for k, v in state.params.items()}
    xi, yi = (x[i], y[i]) if per_member else (x, y)
    cfg = configs[i]
    want = ref_train_member(trainer.model, "regression", init, cfg, mixed.SEEDS[i], xi, yi, 8)
    for k, w in want.items():
        torch.testing.assert_close(out.params[k][i], w, rtol=1e-9, atol=1e-11)


def test_compiled_step_trains_a_subset_of_members() -> None:
    """``members=`` (what PBT's exploit and sweeps' refits use) through the compiled step."""
    trainer, state, hp, x, y = mixed._setup(SGD_ALL, True)
    some = torch.tensor([1, 4, 8])
    comp = _compiled(trainer)
    out = comp.train(state, hp, x, y, 5, True, members=some)
    mixed._close(out, trainer.train(state, hp, x, y, 5, True, plan=GENERAL, members=some))
    assert len(comp._compiled) == 1


def test_mixed_populations_take_the_grouped_eager_path() -> None:
    """A population mixing optimizers and adapts is not compiled (the grouped path is faster
    for it) and gives the eager numbers."""
    trainer, state, hp, x, y = mixed._setup(mixed.MIXED, True)
    comp = _compiled(trainer)
    mixed._close(comp.train(state, hp, x, y, 4, True), trainer.train(state, hp, x, y, 4, True))
    assert comp._compiled == {}
