"""Contract kits: check your own model and task family before you meta-train them.

raymeta rebuilds a model and a task family from their names and JSON options in every Ray Train
worker, Tune trial and sweep task, runs a meta-batch of tasks through one ``torch.func.vmap``,
and trusts a family's meta-splits to keep held-out tasks held out. A plug-in that breaks one of
those assumptions fails far from your session, or trains silently wrong. These checks run the
same assumptions in a plain pytest session (no Ray, a few seconds) and raise a
``ContractError`` whose one-line message names the first broken rule and how to fix it, in the
spirit of optuna's sampler test cases. Add them to your own test suite::

    # tests/test_raymeta_contract.py
    from raymeta.testing import check_model, check_task_family

    from mypkg.nets import MyNet            # MyNet(input_shape, output_dim, **options)
    from mypkg.tasks import MyFamily        # a raymeta.tasks.TaskFamily


    def test_my_net_meets_raymeta_contract() -> None:
        check_model(MyNet, (1,), 1)
        check_model(MyNet, (1,), 1, {"width": 64})      # the options you will meta-train with
        check_model("mypkg.nets:MyNet", (1,), 1)        # the import path meta.json stores


    def test_my_family_meets_raymeta_contract() -> None:
        check_task_family(MyFamily())
        check_task_family(MyFamily, {"shots": 5})       # a class or factory plus its options

``check_model`` rules: JSON-able options, builds, returns an ``nn.Module`` with floating-point
parameters, a ``head`` layer (``head.*`` parameters, what ANIL and head-only fine-tuning adapt)
plus a body, no BatchNorm running statistics or other buffers mutated in forward, a finite
``(batch, output_dim)`` output, deterministic initialisation under ``torch.manual_seed``,
options that survive JSON, and vmapped MAML / ANIL meta-gradients equal to a per-task loop.
``check_task_family`` rules: a ``TaskFamily`` with typed ``name`` / ``kind`` / ``input_shape`` /
``output_dim``, JSON-able ``options()``, fixed-shape finite ``sample`` batches drawn only from
the given generator, deterministic ``task(split, index)`` with non-empty train / val / test,
disjoint meta-splits, and a family rebuilt from ``spec()`` that gives identical tasks. The
modules ``raymeta.core.contract`` and ``raymeta.tasks.contract`` list every rule.

``ContractError`` is a ``raymeta.ConfigError``; its ``rule`` attribute names the broken rule,
so a test of a deliberately broken plug-in can assert on it.
"""

from __future__ import annotations

from raymeta.core.contract import check_model, check_model_runs
from raymeta.errors import ContractError
from raymeta.tasks.contract import check_task_family

__all__ = ["ContractError", "check_model", "check_model_runs", "check_task_family"]
