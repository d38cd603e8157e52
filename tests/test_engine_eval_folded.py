"""Evaluations of built-in conv nets on the CPU fold the tasks into one net
(``conv_batched.folded_episode_scores``), and folded inputs are channels-last there: both must
give the per-task scores of an independent loop over tasks (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from raymeta.core.conv_batched import CHANNELS_LAST_MAX_TASKS, fold_inputs
from raymeta.core.engine import LR_PREFIX, LSLR_PREFIX, InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model
from raymeta.tasks.base import TaskBatch

F64 = torch.float64


def _conv(norm: str = "group") -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("conv4", (2, 10, 10), 3, {"hidden": 6, "norm": norm})
    return build_model(spec).double()


def _episodes(n: int = 5) -> TaskBatch:
    """3-way 2-shot, 4 queries, 2-channel 10x10 images; labels drawn so accuracy varies."""
    g = torch.Generator().manual_seed(7)
    return TaskBatch(
        torch.randn(n, 6, 2, 10, 10, generator=g, dtype=F64),
        torch.arange(3).repeat_interleave(2).expand(n, -1).clone(),
        torch.randn(n, 12, 2, 10, 10, generator=g, dtype=F64),
        torch.randint(0, 3, (n, 12), generator=g),
    )


def _looped_scores(
    engine: MetaEngine, params: dict[str, torch.Tensor], batch: TaskBatch, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each task alone: ``steps`` first-order SGD steps of ``autograd.grad`` on its support
    set (Meta-SGD's per-parameter rates, LSLR's per-step rates, else the fixed rate) over the
    engine's adapted keys, then the query loss and accuracy."""
    names = [n for n, _ in engine.model.named_parameters()]
    losses, accs = [], []
    for t in range(batch.n_tasks):
        fast = {n: params[n].detach().clone() for n in names}
        for i in range(steps):
            leaves = {k: fast[k].detach().requires_grad_(True) for k in engine.adapt_keys}
            out = functional_call(engine.model, {**fast, **leaves}, (batch.xs[t],))
            grads = torch.autograd.grad(
                F.cross_entropy(out, batch.ys[t]), [leaves[k] for k in engine.adapt_keys]
            )
            for k, gk in zip(engine.adapt_keys, grads, strict=True):
                if LR_PREFIX + k in params:
                    rate = params[LR_PREFIX + k]
                elif LSLR_PREFIX + k in params and i < params[LSLR_PREFIX + k].shape[0]:
                    rate = params[LSLR_PREFIX + k][i]
                else:
                    rate = torch.tensor(engine.inner.lr, dtype=F64)
                fast[k] = (leaves[k] - rate * gk).detach()
        with torch.no_grad():
            out = functional_call(engine.model, fast, (batch.xq[t],))
        losses.append(F.cross_entropy(out, batch.yq[t]))
        accs.append((out.argmax(-1) == batch.yq[t]).float().mean())
    return torch.stack(losses), torch.stack(accs)


def _perturbed(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Learned rates that differ per parameter and per step, so a wrong rate shows."""
    g = torch.Generator().manual_seed(1)
    return {
        k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype))
        if k.startswith((LR_PREFIX, LSLR_PREFIX))
        else v
        for k, v in params.items()
    }


@pytest.mark.parametrize(
    ("algo", "norm", "learn_lr"),
    [
        ("maml", "group", False),
        ("maml", "batch", False),
        ("fomaml", "none", False),
        ("metasgd", "group", False),
        ("anil", "group", False),
        ("reptile", "batch", False),
        ("maml", "group", True),
    ],
)
def test_folded_evaluation_equals_a_loop_over_tasks(algo: str, norm: str, learn_lr: bool) -> None:
    """Per-episode query loss and accuracy after 3 first-order steps (one past LSLR's two
    learned steps), on the folded path, equal the loop over tasks and the vmapped path."""
    model = _conv(norm)
    batch = _episodes()
    engine = MetaEngine(model, "classification", algo, InnerConfig(2, 0.3, learn_lr=learn_lr))
    assert engine.evaluates_folded(batch.xs.device)
    params = _perturbed(engine.init_params())
    losses, accs = engine.episode_scores(params, batch, steps=3)
    ref_l, ref_a = _looped_scores(engine, params, batch, 3)
    assert torch.allclose(losses, ref_l, rtol=1e-10, atol=0)
    assert torch.equal(accs, ref_a)
    vm = MetaEngine(
        model, "classification", algo, InnerConfig(2, 0.3, learn_lr=learn_lr), conv_path="vmap"
    )
    assert not vm.evaluates_folded(batch.xs.device)
    vl, va = vm.episode_scores(params, batch, steps=3)
    assert torch.allclose(losses, vl, rtol=1e-10, atol=0)
    assert torch.equal(accs, va)
    assert 0.0 < float(accs.mean()) < 1.0  # the accuracies compared are not all 0 or all 1


def test_evaluate_averages_the_folded_scores() -> None:
    model = _conv()
    batch = _episodes()
    engine = MetaEngine(model, "classification", "maml", InnerConfig(1, 0.3))
    params = engine.init_params()
    losses, accs = engine.episode_scores(params, batch)
    out = engine.evaluate(params, batch)
    assert out["loss"] == pytest.approx(float(losses.mean()), rel=1e-12)
    assert out["accuracy"] == pytest.approx(float(accs.mean()), rel=1e-12)


def test_only_builtin_conv_nets_evaluate_folded() -> None:
    cpu = torch.device("cpu")
    mlp = build_model(ModelSpec("mlp", (4,), 3, {"widths": [8]}))
    assert not MetaEngine(mlp, "classification", "maml", InnerConfig(1, 0.1)).evaluates_folded(cpu)
    conv = _conv()
    assert MetaEngine(conv, "classification", "maml", InnerConfig(1, 0.1)).evaluates_folded(cpu)
    on_gpu = torch.device("cuda")  # auto keeps vmap off the CPU; nothing runs here
    assert not MetaEngine(conv, "classification", "maml", InnerConfig(1, 0.1)).evaluates_folded(
        on_gpu
    )


def test_cpu_folded_inputs_are_channels_last_for_few_tasks_with_the_same_values() -> None:
    """Why channels-last: CPU max-pooling of NCHW tensors is not vectorised over channels
    (BENCHMARKS.md); a fold of many tasks (a population's members) stays NCHW, where grouped
    convolutions of many groups are faster. Layout only: every element sits where the NCHW
    fold puts it."""
    for t, last in (
        (3, True),
        (CHANNELS_LAST_MAX_TASKS, True),
        (CHANNELS_LAST_MAX_TASKS + 1, False),
    ):
        x = torch.randn(t, 4, 2, 5, 5)
        folded = fold_inputs(x)
        assert folded.shape == (4, 2 * t, 5, 5)
        assert folded.is_contiguous(memory_format=torch.channels_last) == last
        assert torch.equal(folded, x.permute(1, 0, 2, 3, 4).reshape(4, 2 * t, 5, 5))
