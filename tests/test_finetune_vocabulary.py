"""The hyperparameter vocabulary is declared once (``raymeta.finetune.hparams.HPARAMS``).

The proof: one more entry in that table makes a new hyperparameter part of the broad space, of
prior samples and PBT explores, of the members' tensors, of a fitted priors' space and
portfolio, of the Ray Tune space, mutations and progress columns, and of the hyperparameters
written into result rows (sweep units and tune reports alike). The one other entry is its column
type in the results schema (``raymeta.results.schema.HPARAM_TYPES``, the typed ``hparams``
struct; the results layer never imports torch), which a test in test_results_format keeps equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.errors import ConfigError
from raymeta.finetune import hparams
from raymeta.finetune.curves import final_rows, val_rows
from raymeta.finetune.fit import fit_priors
from raymeta.finetune.hparams import FinetuneConfig, HParam, broad_space, member_tensors
from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.run import run_population
from raymeta.finetune.step import MemberHParams
from raymeta.priors import Float, broad_prior
from raymeta.tasks import make_family

MOMENTUM = HParam(
    "momentum",
    "float",
    0.0,
    lambda b: Float("momentum", 0.0, 0.99),
    lambda v, _n: float(v),
    column="mom",
)


@pytest.fixture()
def extended(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The vocabulary with one more hyperparameter, and its column type in the results."""
    import pyarrow as pa

    from raymeta.results import schema

    monkeypatch.setattr(hparams, "HPARAMS", (*hparams.HPARAMS, MOMENTUM))
    monkeypatch.setattr(schema, "HPARAM_TYPES", {**schema.HPARAM_TYPES, "momentum": pa.float64()})
    yield


def test_a_new_hyperparameter_flows_from_the_space_to_the_rows(
    extended: None, ckpt: MetaCheckpoint, tmp_path: Path
) -> None:
    from ray.tune.experiment import Trial

    from raymeta.orchestration.tune._history import HistoryCallback
    from raymeta.orchestration.tune.space import hyperparam_mutations, param_space

    task = make_family(ckpt.family).task("test", 0)
    n = len(task.x_train)
    space = broad_space(list(ckpt.candidates), max_batch=n, max_steps=6)
    assert space.names()[-1] == "momentum"
    prior = broad_prior(space)
    configs = prior.sample(4, np.random.default_rng(0))
    assert all(0.0 <= c["momentum"] <= 0.99 for c in configs)
    explored = prior.perturb(configs[0], np.random.default_rng(1))
    assert "momentum" in explored and 0.0 <= explored["momentum"] <= 0.99
    # members' tensors, validation, defaults
    hp = MemberHParams.from_configs(configs, [1, 2, 3, 4], n)
    assert hp["momentum"].tolist() == pytest.approx([c["momentum"] for c in configs])
    assert FinetuneConfig(lr=0.1)["momentum"] == 0.0
    with pytest.raises(ConfigError, match="momentum"):
        FinetuneConfig(momentum=float("nan"))
    # a sweep unit's population and its rows
    res = run_population(
        task,
        ckpt.candidates,
        configs,
        init="meta",
        steps=6,
        interval=3,
        seed=0,
        prior=prior,
        pbt=True,
    )
    assert "momentum" in res.best.config
    common = {"sweep": "s", "strategy": "meta+broad+pbt", "task": task.task_id, "seed": 0}
    row = final_rows(common, "best", res.member_steps, res.test, res.best.config, res.wall_s)[0]
    assert row["hparams"]["momentum"] == res.best.config["momentum"]
    # a tune report's rows: the trial history records the vocabulary's keys of a (real Tune)
    # trial's config, and the rows carry them
    trial = Trial("raymeta_test", config={**configs[0], "raymeta_trial_steps": 3}, stub=True)
    HistoryCallback(str(tmp_path / "h.jsonl")).on_trial_result(0, [trial], trial, {"val_loss": 0.5})
    rec = json.loads((tmp_path / "h.jsonl").read_text())
    assert rec["hparams"] == {k: configs[0][k] for k in hparams.names()}
    rows = val_rows(common, trial.trial_id, 3, {"val_loss": 0.5}, rec["hparams"], 1.0)
    assert rows[0]["hparams"]["momentum"] == configs[0]["momentum"]
    # the Ray Tune side: space, PBT mutations, progress columns
    assert "momentum" in param_space(prior) and "momentum" in hyperparam_mutations(prior)
    assert hparams.tune_columns()["momentum"] == "mom"
    # a priors fit learns it and its portfolio carries it
    fitted = fit_priors(
        ckpt, n_tasks=2, n_configs=4, rounds=1, refine_repeats=0, max_steps=4, select_tasks=0
    )
    assert "momentum" in fitted.space and all("momentum" in c for c in fitted.portfolio)
    assert "momentum" in fitted.learned.sample(1, np.random.default_rng(0))[0]


def test_the_reference_reads_the_vocabulary_defaults(ckpt: MetaCheckpoint) -> None:
    """A config that leaves keys out trains with the vocabulary's defaults, in the fast step
    and in the looped reference alike (lr 0.01, SGD, no decay, whole train split, all layers)."""
    from raymeta.core.models import build_model
    from raymeta.finetune.population import Population, initial_state

    cand = ckpt.candidate()
    task = make_family(ckpt.family).task("test", 1)
    x, y = task.x_train.double(), task.y_train.double()
    model = build_model(cand.spec).double()
    init = {k: v.detach().double() for k, v in cand.params.items()}
    pop = Population(
        cand.spec,
        task.kind,
        cand.name,
        [{}],
        [5],
        initial_state(cand.spec, init, [0], torch.float64),
    )
    pop.train(x, y, 4)
    want = ref_train_member(model, task.kind, init, {}, 5, x, y, 4)
    for k, v in want.items():
        torch.testing.assert_close(pop.state.params[k][0], v, rtol=1e-9, atol=1e-12)
    full = ref_train_member(model, task.kind, init, FinetuneConfig().to_dict(), 5, x, y, 4)
    for k, v in want.items():
        torch.testing.assert_close(full[k], v, rtol=0, atol=0)


def test_configs_are_checked_against_the_vocabulary() -> None:
    assert FinetuneConfig(lr=0.1, optimizer="adam").to_dict()["optimizer"] == "adam"
    for bad, needle in (
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"steps": True}, "steps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"adapt": "body"}, "adapt"),
        ({"momentum": 0.9}, "unknown hyperparameter"),
    ):
        with pytest.raises(ConfigError, match=needle):
            FinetuneConfig(bad)
    # Tune's own keys in a trial config are not hyperparameters: members ignore them
    t = member_tensors([{"lr": 0.5, "raymeta_trial_steps": 3}], n_train=7, horizon=9)
    assert t["lr"].item() == 0.5 and t["steps"].item() == 9 and t["batch_size"].item() == 7
    assert set(t) == {h.name for h in hparams.HPARAMS if h.encode is not None}


def test_the_broad_space_is_the_vocabulary_in_order() -> None:
    space = broad_space(["mlp", "wide"], max_batch=25, max_steps=100)
    assert space.names() == hparams.names()
    assert space["model"].choices == ("mlp", "wide")  # type: ignore[union-attr]
    assert set(hparams.fixed_names()) == {"steps", "model"}
