"""The folded path's default chunks on the CPU: sized from the activations a chunk holds, and
the meta-gradient the same (float64, against the looped reference) however it is chunked."""

from __future__ import annotations

import pytest
import torch

from raymeta.core import engine as engine_mod
from raymeta.core.engine import InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model, builtin_activations, footprint
from raymeta.core.reference import ref_meta_grad
from raymeta.tasks.base import TaskBatch

F64 = torch.float64


def _episodes(n: int, shots: int, queries: int, shape: tuple[int, ...], ways: int) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    return TaskBatch(
        torch.randn(n, ways * shots, *shape, generator=g, dtype=F64),
        torch.arange(ways).repeat_interleave(shots).expand(n, -1).clone(),
        torch.randn(n, ways * queries, *shape, generator=g, dtype=F64),
        torch.arange(ways).repeat_interleave(queries).expand(n, -1).clone(),
    )


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b))
    return float(diff / torch.sqrt(sum((b[k] ** 2).sum() for k in b)))


def test_builtin_conv4_at_omniglot_size_is_chunked_within_the_budget() -> None:
    """5-way 1-shot, 15 queries, 28x28, hidden 64 (the engine benchmark's Conv4): ~70 MB of
    activations per task, so a meta-batch of 32 runs in chunks of a few tasks."""
    spec = ModelSpec("conv4", (1, 28, 28), 5, {"hidden": 64})
    model = build_model(spec)
    engine = MetaEngine(model, "classification", "maml", InnerConfig(1, 0.4))
    batch = _episodes(32, 1, 15, (1, 28, 28), 5).to(dtype=torch.float32)
    size = engine.cpu_chunk_size(batch)
    per_task = (75 + 5) * footprint(spec)[1] * 4
    assert 1 <= size < 32
    assert size * per_task <= engine_mod.CPU_CHUNK_BYTES < (size + 1) * per_task
    # what footprint measures for the spec is what the engine sizes from its model
    assert builtin_activations(model, (1, 28, 28)) == footprint(spec)[1]


def test_user_chunk_size_wins_and_small_models_stay_in_one_chunk() -> None:
    conv = build_model(ModelSpec("conv4", (1, 28, 28), 5, {"hidden": 64}))
    batch = _episodes(32, 1, 15, (1, 28, 28), 5).to(dtype=torch.float32)
    assert MetaEngine(conv, "classification", chunk_size=16).cpu_chunk_size(batch) == 16
    mlp = build_model(ModelSpec("mlp", (1,), 1, {"widths": [40, 40]}))
    sin = TaskBatch(
        torch.randn(32, 10, 1),
        torch.randn(32, 10, 1),
        torch.randn(32, 10, 1),
        torch.randn(32, 10, 1),
    )
    ckpt = MetaEngine(mlp, "regression", "maml", InnerConfig(5, 0.01, checkpoint=True))
    assert ckpt.cpu_chunk_size(sin) == 32


def _two_task_budget(monkeypatch: pytest.MonkeyPatch) -> tuple[torch.nn.Module, TaskBatch]:
    """A small float64 Conv4, 5 episodes (3-way, 2 shots, 3 queries: 9 + 6 x 2 inner steps
    rows per task) and a CPU chunk budget that fits two of its tasks."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("conv4", (1, 10, 10), 3, {"hidden": 6})).double()
    batch = _episodes(5, 2, 3, (1, 10, 10), 3)
    per_task = (9 + 6 * 2) * builtin_activations(model, (1, 10, 10)) * 8
    monkeypatch.setattr(engine_mod, "CPU_CHUNK_BYTES", 2 * per_task + 1)
    return model, batch


@pytest.mark.parametrize("algo", ["maml", "metasgd", "anil"])
def test_default_chunks_give_the_looped_meta_gradient(
    algo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget that fits two tasks of this small Conv4: 5 tasks run as chunks 2 + 2 + 1, and
    the summed meta-gradient equals the per-task loop and the one-chunk folded run."""
    model, batch = _two_task_budget(monkeypatch)
    engine = MetaEngine(model, "classification", algo, InnerConfig(2, 0.1))
    assert engine.uses_folded(batch.xs.device) and engine.cpu_chunk_size(batch) == 2
    params = engine.init_params()
    loss, grads = engine.meta_grad(params, batch)
    whole = MetaEngine(model, "classification", algo, InnerConfig(2, 0.1), chunk_size=5)
    loss1, grads1 = whole.meta_grad(params, batch)
    _, ref = ref_meta_grad(model, "classification", algo, params, batch, 2, 0.1)
    assert _rel(grads, ref) < 1e-10
    assert _rel(grads, grads1) < 1e-12
    assert abs(float(loss) - float(loss1)) < 1e-12


@pytest.mark.parametrize("algo", ["maml", "metasgd", "reptile"])
def test_default_chunks_give_the_same_evaluation(
    algo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta-validation is chunked on the CPU the same way (it peaked at 3.5 GB for 100 Conv4
    tasks in one vmapped call): per-episode scores equal the one-chunk run, for every
    algorithm's engine (Reptile's too: it evaluates through the same vmapped loop)."""
    model, batch = _two_task_budget(monkeypatch)
    engine = MetaEngine(model, "classification", algo, InnerConfig(2, 0.1))
    assert engine.cpu_chunk_size(batch) == 2
    params = engine.init_params()
    losses, accs = engine.episode_scores(params, batch, steps=3)
    whole = MetaEngine(model, "classification", algo, InnerConfig(2, 0.1), chunk_size=5)
    losses1, accs1 = whole.episode_scores(params, batch, steps=3)
    assert losses.shape == (5,)
    assert torch.allclose(losses, losses1, rtol=1e-12, atol=0)
    assert torch.equal(accs, accs1)
