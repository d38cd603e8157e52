"""``run_population`` (a sweep's unit of work) on a checkpoint with two model candidates:
members train with their config's model, one ``Population`` per candidate in lockstep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymeta.core.checkpoint import Candidate, MetaCheckpoint
from raymeta.core.models import ModelSpec, build_model
from raymeta.errors import ConfigError
from raymeta.finetune.hparams import broad_space
from raymeta.finetune.population import (
    SWEEP_RULE,
    Population,
    every,
    initial_state,
    run_schedule,
)
from raymeta.finetune.run import run_population
from raymeta.priors import broad_prior
from raymeta.tasks import FamilySpec, make_family


def _two_candidates() -> MetaCheckpoint:
    cands = {}
    for name, widths in (("mlp", [40, 40]), ("wide", [64])):
        spec = ModelSpec("mlp", (1,), 1, {"widths": widths})
        torch.manual_seed(len(widths))
        params = {k: v.detach().clone() for k, v in build_model(spec).named_parameters()}
        cands[name] = Candidate(name, spec, params, {"inner_lr": 0.01})
    return MetaCheckpoint(FamilySpec("sinusoid"), cands)


def test_members_train_their_own_model_in_lockstep() -> None:
    ckpt = _two_candidates()
    task = make_family("sinusoid").task("test", 4)
    prior = broad_prior(broad_space(list(ckpt.candidates), len(task.x_train), max_steps=12))
    configs = prior.sample(6, np.random.default_rng(2))
    for i, c in enumerate(configs):
        c["model"], c["lr"] = ("wide" if i % 3 == 1 else "mlp"), min(c["lr"], 0.05)
    kw = {"init": "meta", "steps": 12, "interval": 4, "seed": 3, "prior": prior}
    plain = run_population(task, ckpt.candidates, configs, **kw)  # type: ignore[arg-type]
    c = plain.curves
    assert c.step == [4, 8, 12] and len(c.loss[0]) == 6 and c.member_steps_total == 6 * 12
    # each candidate's members: the same curves as that candidate's population on its own
    for name in ("mlp", "wide"):
        idx = [i for i, cf in enumerate(configs) if cf["model"] == name]
        cand = ckpt.candidates[name]
        pop = Population(
            cand.spec,
            task.kind,
            name,
            [configs[i] for i in idx],
            [3 * 1_000_003 + i for i in idx],
            initial_state(cand.spec, cand.params, [0] * len(idx)),
            horizon=12,
        )
        loss = [
            ev.loss.tolist()
            for ev in run_schedule(
                pop, (task.x_train, task.y_train), (task.x_val, task.y_val), every(4, 12)
            )
        ]
        got = [[c.loss[e][i] for i in idx] for e in range(len(loss))]
        np.testing.assert_allclose(got, loss, rtol=1e-6)
    # with PBT, exploits stay within a model: source and destination are one candidate's
    res = run_population(task, ckpt.candidates, configs, **kw, pbt=True)  # type: ignore[arg-type]
    c = res.curves
    assert c.events and all(
        configs[e["src"]]["model"] == configs[e["dst"]]["model"] == e["new"]["model"]
        for e in c.events
    )
    # the best snapshot is the lowest of all members', and it is tested with its own model
    finite = [v for row in c.loss for v in row if np.isfinite(v)]
    assert res.best.val_loss == pytest.approx(min(finite))
    assert res.best.config["model"] == configs[res.best.member]["model"]
    assert set(res.best.params) == {
        k for k, _ in build_model(ckpt.candidates[res.best.config["model"]].spec).named_parameters()
    }
    assert np.isfinite(res.test["test_loss"])


def test_bad_requests_are_one_line_errors() -> None:
    ckpt = _two_candidates()
    task = make_family("sinusoid").task("test", 0)
    kw = {"init": "meta", "steps": 4, "interval": 2, "seed": 0}
    with pytest.raises(ConfigError, match="not a candidate"):
        run_population(task, ckpt.candidates, [{"model": "huge"}], **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown init"):
        run_population(task, ckpt.candidates, [{}], **{**kw, "init": "warm"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="PBT needs a prior"):
        run_population(task, ckpt.candidates, [{}], **kw, pbt=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one member"):
        run_population(task, ckpt.candidates, [], **kw)  # type: ignore[arg-type]
    assert SWEEP_RULE.count(2) == 1 and SWEEP_RULE.count(8) == 2
