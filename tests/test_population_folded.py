"""The stacked-net population step (``PopulationTrainer.folded``) gives the vmapped step's
numbers (float64).

Built-in MLP and Conv4 shapes run their members as one stacked net (linear layers as batched
matmuls, convolutions grouped by member); ``fold=False`` runs the same members through
``vmap`` over ``functional_call``, the path every other model takes and the one
``test_population.py`` checks against the looped ``torch.optim`` reference. Here both paths
train the same mixed populations (SGD / Adam, all / head-only, full batch / minibatches,
members stopping mid-call) on shared and per-member data, for regression and classification,
and must agree in weights, moments, steps and evaluations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from raymeta.core.models import ModelSpec, build_model
from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.step import GENERAL, MemberHParams, PopulationState, PopulationTrainer

N_TRAIN, N_STEPS = 7, 5
CONFIGS: list[dict[str, Any]] = [
    {"lr": 0.05},
    {"lr": 0.01, "optimizer": "adam", "weight_decay": 0.05},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 4, "adapt": "head"},
    {"lr": 0.03, "weight_decay": 0.1, "batch_size": 3},
    {"lr": 0.1, "adapt": "head", "steps": 3},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 2, "steps": 4},
]
SEEDS = [11 + 5 * i for i in range(len(CONFIGS))]
# (spec, kind): an MLP regressor, an MLP classifier and Conv4 classifiers with each norm
MODELS = {
    "mlp-regression": (ModelSpec("mlp", (3,), 2, {"widths": [6, 5]}), "regression"),
    # one input, one output (sinusoid's shape): the stacked net's size-1 reshapes
    "mlp-scalar": (ModelSpec("mlp", (1,), 1, {"widths": [5, 4]}), "regression"),
    "mlp-classification": (ModelSpec("mlp", (2, 2), 3, {"widths": [7]}), "classification"),
    "conv4-group": (ModelSpec("conv4", (2, 12, 10), 3, {"hidden": 4}), "classification"),
    "conv4-batch": (
        ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 3, "norm": "batch"}),
        "classification",
    ),
    "conv4-none": (ModelSpec("conv4", (1, 4, 4), 2, {"hidden": 2, "norm": "none"}), "regression"),
}


def _setup(
    name: str, per_member: bool
) -> tuple[
    torch.nn.Module, str, PopulationState, MemberHParams, torch.Tensor, torch.Tensor, torch.Tensor
]:
    spec, kind = MODELS[name]
    torch.manual_seed(0)
    model = build_model(spec).double()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(4)
    lead = (len(CONFIGS), N_TRAIN) if per_member else (N_TRAIN,)
    x = torch.randn(*lead, *spec.input_shape, generator=g, dtype=torch.float64)
    if kind == "classification":
        y = torch.randint(0, spec.output_dim, lead, generator=g)
    else:
        y = torch.randn(*lead, spec.output_dim, generator=g, dtype=torch.float64)
    hp = MemberHParams.from_configs(CONFIGS, SEEDS, N_TRAIN)
    state = PopulationState.from_params(init, len(CONFIGS))
    return model, kind, state, hp, x, y, torch.tensor(0)


ADAM = [i for i, c in enumerate(CONFIGS) if c.get("optimizer") == "adam"]


def _tol(name: str, member: int) -> dict[str, float]:
    """Float64 rounding, except for Adam members of a net with norm layers: a conv bias right
    before a GroupNorm / BatchNorm has a gradient that is zero in exact arithmetic and ~1e-17
    in float64 (a different summation order gives a different ~1e-17), and Adam's first update
    ``g / (|g| + 1e-8)`` scales that difference by 1e8 (measured: 6e-9 relative after one step;
    SGD members and the norm-free net agree to 1e-16)."""
    loose = member in ADAM and name in ("conv4-group", "conv4-batch")
    return {"rtol": 1e-6, "atol": 1e-9} if loose else {"rtol": 1e-11, "atol": 1e-13}


def _close(a: PopulationState, b: PopulationState, name: str) -> None:
    for part in ("params", "m", "v"):
        for k, want in getattr(b, part).items():
            got = getattr(a, part)[k]
            assert got.shape == want.shape and got.shape[0] == len(CONFIGS)
            for member in range(len(CONFIGS)):
                torch.testing.assert_close(got[member], want[member], **_tol(name, member))
    assert torch.equal(a.step, b.step)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_folded_equals_vmapped(name: str, per_member: bool) -> None:
    model, kind, state, hp, x, y, _ = _setup(name, per_member)
    folded = PopulationTrainer(model, kind)
    vmapped = PopulationTrainer(model, kind, fold=False)
    assert folded.folds and not vmapped.folds
    assert folded.folded(torch.device("cpu"))
    got = folded.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    want = vmapped.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    _close(got, want, name)
    # the general (masked) path too, which computes its gradients through the same nets
    got_g = folded.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL)
    want_g = vmapped.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL)
    _close(got_g, want_g, name)
    assert not torch.equal(got.params["head.weight"], state.params["head.weight"])
    for params in (state.params, got.params):  # evaluations, at the start and trained
        a = folded.evaluate(params, x, y, per_member_data=per_member)
        b = vmapped.evaluate(params, x, y, per_member_data=per_member)
        assert (
            a.keys() == b.keys() == ({"loss", "accuracy"} if kind == "classification" else {"loss"})
        )
        for k in a:
            assert a[k].shape == (len(CONFIGS),)
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["mlp-classification", "conv4-group"])
def test_folded_members_match_the_looped_reference(name: str) -> None:
    """Each member of the stacked net, shared data, against ``torch.optim`` alone."""
    model, kind, state, hp, x, y, _ = _setup(name, per_member=False)
    got = PopulationTrainer(model, kind).train(state, hp, x, y, N_STEPS)
    init = {k: v[0] for k, v in state.params.items()}
    for i, cfg in enumerate(CONFIGS):
        want = ref_train_member(model, kind, init, cfg, SEEDS[i], x, y, N_STEPS)
        for k, v in want.items():
            torch.testing.assert_close(got.params[k][i], v, **_tol(name, i))


def test_head_features_are_the_body_output() -> None:
    """A head-only member's cached features (``head_inputs``) are the stacked body's output,
    the same tensor the vmapped hook captures."""
    model, kind, state, _, x, _, _ = _setup("conv4-group", per_member=True)
    folded = PopulationTrainer(model, kind)
    vmapped = PopulationTrainer(model, kind, fold=False)
    a = folded.head_inputs(state.params, x, 0, 1, 4)
    b = vmapped.head_inputs(state.params, x, 0, 1, 4)
    assert a is not None and b is not None and a.shape == b.shape == (3, N_TRAIN, 4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert folded.head_is_last and vmapped.head_is_last


def test_other_models_are_not_folded() -> None:
    """A model that is not an MLP / Conv4 shape stays on the vmapped path."""

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 4))
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.body(x)))

    assert not PopulationTrainer(Odd(), "regression").folds


@pytest.mark.parametrize("name", ["mlp-regression", "conv4-group"])
def test_weight_gradients_come_out_in_the_weights_layout(name: str) -> None:
    """The stacked net's linear weight gradients are contiguous, in the weights' layout: the fused
    optimizer kernels ignore strides, so a transposed gradient (what ``h @ w^T`` gives) was
    copied for every parameter at every step (the largest cost of a priors fit's Adam
    update on 784-feature tasks). The outputs are the per-member models' own."""
    from raymeta.core.conv_batched import fold_inputs, folded_forward

    spec, _ = MODELS[name]
    model = build_model(spec).double()
    members = [build_model(spec).double() for _ in range(3)]
    stacked = {
        k: torch.stack([dict(m.named_parameters())[k].detach() for m in members]).requires_grad_()
        for k, _ in model.named_parameters()
    }
    x = torch.randn(3, 4, *spec.input_shape, dtype=torch.float64)
    folded_x = fold_inputs(x) if spec.name == "conv4" else x
    out = folded_forward(model, stacked, folded_x)
    for i, m in enumerate(members):
        torch.testing.assert_close(out[i], m(x[i]), rtol=1e-12, atol=1e-12)
    wrt = list(stacked.values())
    grads = dict(zip(stacked, torch.autograd.grad(out.square().sum(), wrt), strict=True))
    linear = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert "head" in linear
    for n in linear:  # (a convolution's follows its fold's memory format)
        g = grads[f"{n}.weight"]
        assert g.is_contiguous() and g.shape == stacked[f"{n}.weight"].shape, n


def test_one_row_matmul_operands_are_row_major() -> None:
    """Every ``(T, 1, n)`` operand of the stacked net's batched matmuls, forward and backward,
    has the standard row-major strides ``(n, n, 1)``. Why: a one-input or one-output layer
    (sinusoid's MLP) transposed as a view gives ``(n, 1, 1)``, which the CPU's batched matmul
    takes as a transposed operand and, beside a transposed other operand, runs ~8x slower
    (the head's weight gradient was a fifth of a 1,024-member population step). The outputs
    are the members' own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from raymeta.core.conv_batched import folded_forward

    spec, _ = MODELS["mlp-scalar"]
    model = build_model(spec).double()
    members = [build_model(spec).double() for _ in range(3)]
    stacked = {
        k: torch.stack([dict(m.named_parameters())[k].detach() for m in members]).requires_grad_()
        for k, _ in model.named_parameters()
    }
    x = torch.randn(3, 6, 1, dtype=torch.float64)
    seen: list[torch.Tensor] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.ops.aten.bmm.default:
                seen.extend(args[:2])
            return func(*args, **(kwargs or {}))

    with Record():
        out = folded_forward(model, stacked, x)
        torch.autograd.grad(out.square().sum(), list(stacked.values()))
    for i, m in enumerate(members):
        torch.testing.assert_close(out[i], m(x[i]), rtol=1e-12, atol=1e-12)
    one_row = [a for a in seen if a.shape[1] == 1 and a.shape[2] > 1]
    assert len(one_row) >= 3  # the head's forward and weight gradient, the input's gradient
    for a in one_row:
        assert a.stride()[1:] == (a.shape[2], 1), (tuple(a.shape), a.stride())
