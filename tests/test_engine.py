"""The vmapped engine against the looped reference (float64), plus its invariants."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from raymeta.core.engine import ALGORITHMS, InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model
from raymeta.core.reference import ref_meta_grad
from raymeta.errors import ConfigError
from raymeta.tasks.base import TaskBatch

STEPS, LR = 2, 0.1


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative error over ALL entries: per-tensor ratios are ill-defined where the exact
    gradient is zero (e.g. a conv bias right before a one-channel-per-group GroupNorm)."""
    assert sorted(a) == sorted(b)
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b))
    norm = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return float(diff / norm)


def _setup(model_name: str, n: int = 4, seed: int = 0) -> tuple[torch.nn.Module, str, TaskBatch]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    f64 = torch.float64
    if model_name == "mlp":
        model = build_model(ModelSpec("mlp", (1,), 1, {"widths": [8, 8]})).double()
        xs, xq = (
            torch.randn(n, 5, 1, generator=g, dtype=f64),
            torch.randn(n, 6, 1, generator=g, dtype=f64),
        )
        batch = TaskBatch(xs, torch.sin(3 * xs), xq, torch.sin(3 * xq))
        return model, "regression", batch
    model = build_model(ModelSpec("conv4", (1, 16, 16), 3, {"hidden": 8})).double()
    batch = TaskBatch(
        torch.randn(n, 3, 1, 16, 16, generator=g, dtype=f64),
        torch.randint(0, 3, (n, 3), generator=g),
        torch.randn(n, 6, 1, 16, 16, generator=g, dtype=f64),
        torch.randint(0, 3, (n, 6), generator=g),
    )
    return model, "classification", batch


def _params(engine: MetaEngine) -> dict[str, torch.Tensor]:
    p = engine.init_params()
    if engine.algo == "metasgd":  # distinct per-entry rates, so a mix-up of rates would show
        g = torch.Generator().manual_seed(7)
        p = {
            k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype))
            if k.startswith("lr.")
            else v
            for k, v in p.items()
        }
    return p


@pytest.mark.parametrize("model_name", ["mlp", "conv4"])
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_meta_grad_matches_looped_reference(model_name: str, algo: str) -> None:
    model, kind, batch = _setup(model_name)
    engine = MetaEngine(model, kind, algo, InnerConfig(STEPS, LR), chunk_size=3)
    params = _params(engine)
    loss, grads = engine.meta_grad(params, batch)
    ref_loss, ref_grads = ref_meta_grad(model, kind, algo, params, batch, STEPS, LR)
    assert sorted(grads) == sorted(params)
    assert abs(float(loss) - float(ref_loss)) <= 1e-10 * abs(float(ref_loss))
    assert _rel(grads, ref_grads) <= 1e-6
    for k in grads:  # per tensor, measured against the gradient's overall scale
        scale = max(float(ref_grads[k].norm()), 1e-3)
        assert float((grads[k] - ref_grads[k]).norm()) <= 1e-6 * scale, k


def test_second_order_terms_matter() -> None:
    """Guards the reference itself: MAML and FOMAML gradients must differ measurably."""
    model, kind, batch = _setup("mlp")
    maml = MetaEngine(model, kind, "maml", InnerConfig(STEPS, LR)).meta_grad(
        _params(MetaEngine(model, kind, "maml")), batch
    )[1]
    fo = MetaEngine(model, kind, "fomaml", InnerConfig(STEPS, LR)).meta_grad(
        _params(MetaEngine(model, kind, "maml")), batch
    )[1]
    assert _rel(fo, maml) > 1e-3


def test_anil_inner_loop_touches_only_head() -> None:
    model, kind, batch = _setup("mlp")
    engine = MetaEngine(model, kind, "anil", InnerConfig(3, LR))
    params = engine.init_params()
    fast = engine.adapt(params, batch.xs[0], batch.ys[0])
    for k in params:
        changed = not torch.equal(fast[k], params[k])
        assert changed == k.startswith("head."), k


@pytest.mark.parametrize("model_name", ["mlp", "conv4"])
def test_reptile_equals_manual_interpolation(model_name: str) -> None:
    """Reptile's outer SGD step with lr eps == params + eps * mean_i(adapted_i - params), where
    each adapted_i comes from a plain torch.optim.SGD loop on a copy of the module."""
    model, kind, batch = _setup(model_name)
    steps, lr, eps = 3, 0.05, 0.3
    engine = MetaEngine(model, kind, "reptile", InnerConfig(steps, lr))
    params = {k: v.clone().requires_grad_(True) for k, v in engine.init_params().items()}
    _, grads = engine.meta_grad({k: v.detach() for k, v in params.items()}, batch)
    opt = torch.optim.SGD(list(params.values()), lr=eps)
    for k, p in params.items():
        p.grad = grads[k]
    opt.step()

    adapted = []
    for i in range(batch.n_tasks):
        net = copy.deepcopy(model)
        inner = torch.optim.SGD(net.parameters(), lr=lr)
        for _ in range(steps):
            out = net(batch.xs[i])
            if kind == "regression":
                loss = ((out - batch.ys[i]) ** 2).mean()
            else:
                loss = torch.nn.functional.cross_entropy(out, batch.ys[i])
            inner.zero_grad()
            loss.backward()
            inner.step()
        adapted.append(dict(net.named_parameters()))
    init = dict(model.named_parameters())
    for k, p in params.items():
        mean_adapted = torch.stack([a[k].detach() for a in adapted]).mean(0)
        expected = init[k].detach() + eps * (mean_adapted - init[k].detach())
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_metasgd_learning_rates_get_nonzero_gradients() -> None:
    model, kind, batch = _setup("mlp")
    engine = MetaEngine(model, kind, "metasgd", InnerConfig(1, LR))
    params = engine.init_params()
    lr_keys = [k for k in params if k.startswith("lr.")]
    assert len(lr_keys) == len(list(model.parameters()))
    _, grads = engine.meta_grad(params, batch)
    for k in lr_keys:
        assert grads[k].shape == params[k].shape
        assert torch.isfinite(grads[k]).all()
        assert float(grads[k].abs().sum()) > 0, k


@pytest.mark.parametrize("algo", ["maml", "metasgd", "anil"])
def test_adapt_leaves_inputs_unchanged(algo: str) -> None:
    model, kind, batch = _setup("mlp")
    engine = MetaEngine(model, kind, algo, InnerConfig(3, LR))
    params = engine.init_params()
    before = {k: v.clone() for k, v in params.items()}
    module_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fast = engine.adapt(params, batch.xs[0], batch.ys[0])
    assert any(not torch.equal(fast[k], params[k]) for k in fast)
    for k in params:
        assert torch.equal(params[k], before[k]), k
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), module_before[k]), k
    engine.meta_grad(params, batch)
    for k in params:
        assert torch.equal(params[k], before[k]), k


@pytest.mark.parametrize("algo", ["maml", "reptile"])
def test_chunked_equals_unchunked(algo: str) -> None:
    model, kind, batch = _setup("mlp", n=7)
    whole = MetaEngine(model, kind, algo, InnerConfig(STEPS, LR))
    params = whole.init_params()
    loss_w, g_w = whole.meta_grad(params, batch)
    for chunk in (1, 3, 7, 100):
        loss_c, g_c = MetaEngine(
            model, kind, algo, InnerConfig(STEPS, LR), chunk_size=chunk
        ).meta_grad(params, batch)
        assert abs(float(loss_c) - float(loss_w)) <= 1e-12
        assert _rel(g_c, g_w) <= 1e-12


def test_sum_reduction_is_mean_times_tasks() -> None:
    model, kind, batch = _setup("mlp", n=5)
    engine = MetaEngine(model, kind, "maml", InnerConfig(STEPS, LR))
    params = engine.init_params()
    lm, gm = engine.meta_grad(params, batch, reduction="mean")
    ls, gs = engine.meta_grad(params, batch, reduction="sum")
    torch.testing.assert_close(ls, lm * 5)
    for k in gm:
        torch.testing.assert_close(gs[k], gm[k] * 5)


def test_meta_grad_is_deterministic() -> None:
    model, kind, batch = _setup("conv4")
    engine = MetaEngine(model, kind, "maml", InnerConfig(STEPS, LR))
    params = engine.init_params()
    a = engine.meta_grad(params, batch)[1]
    b = engine.meta_grad(params, batch)[1]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_evaluate_matches_reference_adaptation() -> None:
    from torch.func import functional_call

    from raymeta.core.reference import ref_adapt, ref_loss

    model, kind, batch = _setup("mlp")
    engine = MetaEngine(model, kind, "maml", InnerConfig(1, LR))
    params = engine.init_params()
    got = engine.evaluate(params, batch, steps=4)["loss"]
    want = []
    for i in range(batch.n_tasks):
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        fast = ref_adapt(model, kind, leaf, batch.xs[i], batch.ys[i], 4, LR, first_order=True)
        want.append(
            float(ref_loss(kind, functional_call(model, fast, (batch.xq[i],)), batch.yq[i]))
        )
    assert got == pytest.approx(sum(want) / len(want), rel=1e-10)


def test_bad_configuration_is_a_config_error() -> None:
    model, kind, _ = _setup("mlp")
    with pytest.raises(ConfigError, match="unknown algorithm"):
        MetaEngine(model, kind, "mamll")
    with pytest.raises(ConfigError, match="inner steps"):
        MetaEngine(model, kind, "maml", InnerConfig(-1, LR))
    # 8x8 inputs pool down to 1x1: 8 channels in 8 GroupNorm groups leave 1 value per group
    with pytest.raises(ConfigError, match="does not fit inputs of shape"):
        build_model(ModelSpec("conv4", (1, 8, 8), 5, {"hidden": 8}))


@pytest.mark.parametrize("model_name", ["mlp", "conv4"])
def test_bench_implementations_compute_the_same_gradient(model_name: str) -> None:
    """`raymeta bench engine` compares like with like: its bare torch.func version and the
    peers (when installed) give the engine's MAML meta-gradient."""
    from raymeta.bench.engine import _peers, bare_meta_grad, higher_meta_grad, torchopt_meta_grad

    model, kind, batch = _setup(model_name)
    engine = MetaEngine(model, kind, "maml", InnerConfig(STEPS, LR))
    params = engine.init_params()
    want = engine.meta_grad(params, batch)[1]
    # (the bench's plain MSE equals the engine's summed-over-outputs MSE for one output)
    assert _rel(bare_meta_grad(model, kind, params, batch, STEPS, LR), want) <= 1e-10
    peers = {"higher": higher_meta_grad, "torchopt": torchopt_meta_grad}
    for name in _peers():
        net = copy.deepcopy(model)
        peers[name](net, kind, batch, STEPS, LR)
        got = {k: v.grad for k, v in net.named_parameters()}
        assert _rel(got, want) <= 1e-8, name


def test_bench_engine_cli_writes_records(tmp_path: Path) -> None:
    from raymeta.cli.main import main

    out = tmp_path / "engine.json"
    rc = main(
        [
            "bench",
            "engine",
            "--smoke-test",
            "--only",
            "1step",
            "--min-time",
            "0",
            "--no-memory",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    records = json.loads(out.read_text())
    impls = {r["impl"] for r in records}
    assert {"engine", "looped", "bare"} <= impls
    for r in records:
        assert set(r) == {"workload", "meta_batch", "impl", "tasks_per_s", "x_looped", "x_bare"}
        assert r["workload"] == "sinusoid-mlp-1step" and r["meta_batch"] == 25
        assert r["tasks_per_s"] > 0


@pytest.mark.slow
def test_bench_engine_long_inner_loop_reports_checkpointing_and_peak_memory(
    tmp_path: Path,
) -> None:
    from raymeta.cli.main import main

    out = tmp_path / "engine.json"
    argv = ["bench", "engine", "--smoke-test", "--only", "wide", "--min-time", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    records = {r["impl"]: r for r in json.loads(out.read_text())}
    assert set(records) == {"engine", "bare", "looped", "engine-ckpt"}
    for r in records.values():
        assert r["peak_mb"] >= 0 and r["tasks_per_s"] > 0
        assert r["x_looped"] == pytest.approx(
            r["tasks_per_s"] / records["looped"]["tasks_per_s"], rel=0.01
        )
