"""The vmapped population trainer against a per-member torch.optim loop (float64)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from raymeta.core.models import ModelSpec, build_model
from raymeta.core.reference import ref_loss
from raymeta.errors import ConfigError
from raymeta.finetune.reference import ref_hash_uniform, ref_minibatch, ref_train_member
from raymeta.finetune.step import MemberHParams, PopulationState, PopulationTrainer, hash_uniform

CONFIGS: list[dict[str, Any]] = [
    {"lr": 0.05, "optimizer": "sgd"},
    {"lr": 0.02, "optimizer": "sgd", "weight_decay": 0.1, "batch_size": 4},
    {"lr": 0.01, "optimizer": "adam"},
    {"lr": 0.03, "optimizer": "adam", "weight_decay": 0.05, "batch_size": 5, "adapt": "head"},
    {"lr": 0.1, "optimizer": "sgd", "adapt": "head", "steps": 3},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 3, "steps": 5},
    {"lr": 0.04, "optimizer": "sgd", "batch_size": 100},  # larger than the data: full batch
]
SEEDS = [11, 12, 13, 14, 15, 16, 2**40 + 3]
N_STEPS = 8


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec("mlp", (2,), 1, {"widths": [6, 5]})).double()


def _data(members: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shape = (9, 2) if members is None else (members, 9, 2)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(-1, keepdim=True))


def _assert_params_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for k in b:
        torch.testing.assert_close(
            a[k], b[k], rtol=1e-9, atol=1e-11, msg=lambda m, k=k: f"{k}: {m}"
        )


def test_hash_matches_pure_python_twin() -> None:
    seed, step = torch.tensor(2**40 + 5), torch.tensor(17)
    idx = torch.arange(50)
    got = hash_uniform(seed % (2**31 - 1), step, idx)
    want = torch.tensor(
        [ref_hash_uniform(2**40 + 5, 17, i) for i in range(50)], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert float(got.min()) > 0 and float(got.max()) < 1


def test_population_matches_looped_reference_per_member() -> None:
    model = _model()
    x, y = _data()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    hp = MemberHParams.from_configs(CONFIGS, SEEDS, n_train=x.shape[0])
    trainer = PopulationTrainer(model, "regression")
    state = trainer.train(PopulationState.from_params(init, len(CONFIGS)), hp, x, y, N_STEPS)
    for i, (cfg, seed) in enumerate(zip(CONFIGS, SEEDS, strict=True)):
        want = ref_train_member(model, "regression", init, cfg, seed, x, y, N_STEPS)
        _assert_params_close({k: v[i] for k, v in state.params.items()}, want)
        assert not torch.allclose(want["head.weight"], init["head.weight"])  # it did train
        assert int(state.step[i]) == min(N_STEPS, cfg.get("steps", N_STEPS))
    head_only = [i for i, c in enumerate(CONFIGS) if c.get("adapt") == "head"]
    for i in head_only:  # body stayed exactly at the init
        for k in init:
            if not k.startswith("head."):
                assert torch.equal(state.params[k][i], init[k]), k


def test_population_per_member_data_and_evaluate() -> None:
    model = _model()
    n = 3
    x, y = _data(members=n)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfgs, seeds = CONFIGS[:n], SEEDS[:n]
    hp = MemberHParams.from_configs(cfgs, seeds, n_train=x.shape[1])
    trainer = PopulationTrainer(model, "regression")
    state = trainer.train(PopulationState.from_params(init, n), hp, x, y, 4, per_member_data=True)
    ev = trainer.evaluate(state.params, x, y, per_member_data=True)["loss"]
    from torch.func import functional_call

    for i in range(n):
        want = ref_train_member(model, "regression", init, cfgs[i], seeds[i], x[i], y[i], 4)
        _assert_params_close({k: v[i] for k, v in state.params.items()}, want)
        ref = ref_loss("regression", functional_call(model, want, (x[i],)), y[i])
        assert float(ev[i]) == pytest.approx(float(ref), rel=1e-9)


def test_classification_population_matches_reference() -> None:
    torch.manual_seed(1)
    model = build_model(ModelSpec("mlp", (4,), 3, {"widths": [7]})).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfgs = [
        {"lr": 0.1, "optimizer": "sgd", "batch_size": 5},
        {"lr": 0.01, "optimizer": "adam", "adapt": "head"},
    ]
    hp = MemberHParams.from_configs(cfgs, [1, 2], n_train=12)
    trainer = PopulationTrainer(model, "classification")
    state = trainer.train(PopulationState.from_params(init, 2), hp, x, y, 6)
    for i in range(2):
        _assert_params_close(
            {k: v[i] for k, v in state.params.items()},
            ref_train_member(model, "classification", init, cfgs[i], i + 1, x, y, 6),
        )
    acc = trainer.evaluate(state.params, x, y)["accuracy"]
    assert acc.shape == (2,) and bool(((acc >= 0) & (acc <= 1)).all())


def test_packed_equals_one_by_one_and_resumes() -> None:
    """A member's trajectory does not depend on its pack, nor on being split across calls."""
    model = _model()
    x, y = _data()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    hp = MemberHParams.from_configs(CONFIGS, SEEDS, n_train=x.shape[0])
    trainer = PopulationTrainer(model, "regression")
    packed = trainer.train(PopulationState.from_params(init, len(CONFIGS)), hp, x, y, N_STEPS)
    for i in range(len(CONFIGS)):
        alone = trainer.train(PopulationState.from_params(init, 1), hp.index([i]), x, y, N_STEPS)
        for k in init:
            torch.testing.assert_close(
                alone.params[k][0], packed.params[k][i], rtol=1e-12, atol=1e-14
            )
    # split 3 + 5 steps through a state_dict round trip == 8 steps at once
    half = trainer.train(PopulationState.from_params(init, len(CONFIGS)), hp, x, y, 3)
    resumed = PopulationState.from_state_dict({k: v.clone() for k, v in half.state_dict().items()})
    rest = trainer.train(resumed, hp, x, y, N_STEPS - 3)
    for k in init:
        torch.testing.assert_close(rest.params[k], packed.params[k], rtol=1e-12, atol=1e-14)
    assert torch.equal(rest.step, packed.step)


def test_minibatches_vary_by_step_and_seed() -> None:
    a = [ref_minibatch(11, t, 20, 5) for t in range(6)]
    assert len({tuple(m) for m in a}) > 1
    assert ref_minibatch(11, 0, 20, 5) != ref_minibatch(12, 0, 20, 5)
    assert all(len(m) == 5 for m in a)


def test_bad_member_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        MemberHParams.from_configs([{"optimizer": "rmsprop"}], [0], 5)
    with pytest.raises(ConfigError, match="adapt"):
        MemberHParams.from_configs([{"adapt": "body"}], [0], 5)
    with pytest.raises(ConfigError, match="seed"):
        MemberHParams.from_configs([{}, {}], [0], 5)
