"""The folded (grouped-convolution) CPU path and inner-loop checkpointing against the looped
reference, in float64: both must give the same meta-gradients as the plain vmapped engine."""

from __future__ import annotations

import pytest
import torch

from raymeta.core.conv_batched import foldable
from raymeta.core.engine import InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model
from raymeta.core.reference import ref_meta_grad
from raymeta.errors import ConfigError
from raymeta.tasks.base import TaskBatch

STEPS, LR = 2, 0.1


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b))
    return float(diff / torch.sqrt(sum((b[k] ** 2).sum() for k in b)))


def _conv4(norm: str = "group", n: int = 3) -> tuple[torch.nn.Module, TaskBatch]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    f64 = torch.float64
    model = build_model(ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 8, "norm": norm})).double()
    batch = TaskBatch(
        torch.randn(n, 3, 1, 12, 12, generator=g, dtype=f64),
        torch.randint(0, 3, (n, 3), generator=g),
        torch.randn(n, 4, 1, 12, 12, generator=g, dtype=f64),
        torch.randint(0, 3, (n, 4), generator=g),
    )
    return model, batch


def _params(engine: MetaEngine) -> dict[str, torch.Tensor]:
    p = engine.init_params()
    g = torch.Generator().manual_seed(7)  # distinct Meta-SGD rates, so a mix-up would show
    return {
        k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)) if k.startswith("lr.") else v
        for k, v in p.items()
    }


@pytest.mark.parametrize(
    ("algo", "norm"),
    [
        ("maml", "group"),
        ("fomaml", "group"),
        ("anil", "group"),
        ("metasgd", "group"),
        ("maml", "none"),
    ],
)
def test_folded_path_matches_looped_reference(algo: str, norm: str) -> None:
    model, batch = _conv4(norm)
    engine = MetaEngine(model, "classification", algo, InnerConfig(STEPS, LR), chunk_size=2)
    assert engine.uses_folded(torch.device("cpu"))  # auto picks it on the CPU
    params = _params(engine)
    loss, grads = engine.meta_grad(params, batch)
    ref_loss, ref_grads = ref_meta_grad(model, "classification", algo, params, batch, STEPS, LR)
    assert abs(float(loss) - float(ref_loss)) <= 1e-10 * abs(float(ref_loss))
    assert _rel(grads, ref_grads) <= 1e-9
    if algo == "maml" and norm == "group":  # the vmap path (GPU's) still agrees on the CPU
        vm_loss, vm_grads = MetaEngine(
            model, "classification", algo, InnerConfig(STEPS, LR), conv_path="vmap"
        ).meta_grad(params, batch)
        assert _rel(grads, vm_grads) <= 1e-9
        assert abs(float(loss) - float(vm_loss)) <= 1e-10 * abs(float(vm_loss))


def _mlp(n: int = 3) -> tuple[torch.nn.Module, TaskBatch]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = build_model(ModelSpec("mlp", (2,), 1, {"widths": [16, 16]})).double()
    xs = torch.randn(n, 5, 2, generator=g, dtype=torch.float64)
    xq = torch.randn(n, 6, 2, generator=g, dtype=torch.float64)
    return model, TaskBatch(xs, xs.sin().sum(-1, keepdim=True), xq, xq.sin().sum(-1, keepdim=True))


@pytest.mark.parametrize(
    ("model_name", "algo"),
    [("conv4", "maml"), ("conv4", "metasgd"), ("mlp", "maml"), ("mlp", "anil")],
)
def test_checkpointed_inner_loop_gives_same_meta_gradient(model_name: str, algo: str) -> None:
    """Checkpointing runs on the folded autograd path; it must equal the plain vmapped engine
    and the looped reference."""
    model, batch = _conv4() if model_name == "conv4" else _mlp()
    kind = "classification" if model_name == "conv4" else "regression"
    params = _params(MetaEngine(model, kind, algo))
    plain = MetaEngine(model, kind, algo, InnerConfig(3, LR), conv_path="vmap")
    ckpt = MetaEngine(model, kind, algo, InnerConfig(3, LR, checkpoint=True))
    assert ckpt.uses_folded(torch.device("cpu"))
    loss, grads = plain.meta_grad(params, batch)
    c_loss, c_grads = ckpt.meta_grad(params, batch)
    _, ref_grads = ref_meta_grad(model, kind, algo, params, batch, 3, LR)
    assert abs(float(loss) - float(c_loss)) <= 1e-12 * abs(float(loss))
    assert _rel(c_grads, grads) <= 1e-10
    assert _rel(c_grads, ref_grads) <= 1e-9


def test_only_conv4_shaped_models_fold() -> None:
    mlp = build_model(ModelSpec("mlp", (4,), 2, {"widths": [8]}))
    assert foldable(mlp)  # folds (for checkpointing) but auto keeps an MLP on vmap
    plain = torch.nn.Sequential(torch.nn.Linear(4, 2))
    assert not foldable(plain)
    assert foldable(_conv4()[0])
    assert not MetaEngine(mlp, "regression", "maml").uses_folded(torch.device("cpu"))
    assert not MetaEngine(_conv4()[0], "classification", "reptile").uses_folded(torch.device("cpu"))
    with pytest.raises(ConfigError, match="folded"):
        MetaEngine(plain, "regression", "maml", conv_path="folded")
    with pytest.raises(ConfigError, match="vmap path"):
        MetaEngine(
            _conv4()[0], "classification", "maml", InnerConfig(checkpoint=True), conv_path="vmap"
        )
    with pytest.raises(ConfigError, match="conv path"):
        MetaEngine(mlp, "regression", "maml", conv_path="fast")  # type: ignore[arg-type]
