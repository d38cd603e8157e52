"""The benchmark family ``bench_families:Bumps`` (issue 15, item 5): raymeta's own contract kit,
determinism, disjoint meta-splits, split sizes, its noise model, and a short meta-training run
on it without Ray."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = str(Path(__file__).resolve().parent / "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from bench_families import Bumps  # noqa: E402

from raymeta.core.train import MetaTrainConfig, meta_train  # noqa: E402
from raymeta.errors import ConfigError  # noqa: E402
from raymeta.plugins import resolve  # noqa: E402
from raymeta.tasks import FamilySpec, Task  # noqa: E402
from raymeta.tasks.base import SPLITS  # noqa: E402
from raymeta.tasks.registry import make_family  # noqa: E402
from raymeta.testing import check_task_family  # noqa: E402


def _parts(t: Task) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (t.x_train, t.y_train),
        (t.x_val, t.y_val),
        (t.x_test, t.y_test),
    ]


def _same(a: Task, b: Task) -> bool:
    return a.task_id == b.task_id and all(
        torch.equal(x, x2) and torch.equal(y, y2)
        for (x, y), (x2, y2) in zip(_parts(a), _parts(b), strict=True)
    )


def _truth(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The noise-free targets of one task's inputs ``x`` ``(S, 1)``."""
    return Bumps.function(x.double()[None], p)[0].float()


def test_contract_kit() -> None:
    check_task_family(Bumps())
    check_task_family(Bumps, {"shots": 5, "queries": 7, "noise": 0.0})
    check_task_family("bench_families:Bumps", {"noise": 0.5})


def test_interface_and_defaults() -> None:
    f = Bumps()
    assert (f.name, f.kind, f.input_shape, f.output_dim) == ("bumps", "regression", (1,), 1)
    assert f.options() == {
        "shots": 10,
        "queries": 10,
        "task_shots": 10,
        "val_size": 10,
        "test_size": 100,
        "noise": 0.1,
    }
    assert f.default_model() == "mlp"
    assert f.episode_examples() == 20
    assert resolve("family", "bench_families:Bumps") is Bumps
    g = make_family(FamilySpec("bench_families:Bumps", {"noise": 0.2}))
    assert isinstance(g, Bumps) and g.noise == 0.2


def test_fixed_tasks_deterministic_across_instances() -> None:
    a, b = Bumps(), Bumps()
    for split in SPLITS:
        for i in (0, 1, 7, 2**40):
            assert _same(a.task(split, i), b.task(split, i))
    assert not _same(a.task("train", 0), a.task("train", 1))


def test_meta_splits_disjoint() -> None:
    f = Bumps()
    # the slope's grid cell encodes the split, for sampled episodes and fixed tasks alike
    for code, split in enumerate(SPLITS):
        p = f.params(split, 2000, torch.Generator().manual_seed(3))
        assert bool((Bumps.split_of_slope(p["slope"]) == code).all())
        slopes = torch.cat([f.task_params(split, i)["slope"] for i in range(50)])
        assert bool((Bumps.split_of_slope(slopes) == code).all())
    # no two fixed tasks of different splits hold the same data
    seen: dict[bytes, str] = {}
    for split in SPLITS:
        for i in range(50):
            key = f.task(split, i).y_train.numpy().tobytes()
            assert seen.setdefault(key, split) == split
    # the same generator seed draws other episodes for each split
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    tr, va, te = (f.sample(s, 4, g()) for s in SPLITS)
    assert not torch.equal(tr.ys, va.ys) and not torch.equal(va.ys, te.ys)


@pytest.mark.parametrize(
    "opts",
    [{}, {"shots": 3, "queries": 6, "task_shots": 4, "val_size": 5, "test_size": 17}],
)
def test_split_sizes_honour_options_and_values_finite(opts: dict[str, int]) -> None:
    f = Bumps(**opts)
    b = f.sample("train", 6, torch.Generator().manual_seed(1))
    assert b.xs.shape == (6, f.shots, 1) and b.ys.shape == (6, f.shots, 1)
    assert b.xq.shape == (6, f.queries, 1) and b.yq.shape == (6, f.queries, 1)
    assert all(t.dtype == torch.float32 for t in (b.xs, b.ys, b.xq, b.yq))
    assert all(bool(torch.isfinite(t).all()) for t in (b.xs, b.ys, b.xq, b.yq))
    assert float(b.xs.abs().max()) <= 4.0
    for split in SPLITS:
        t = f.task(split, 3)
        sizes = (f.task_shots, f.val_size, f.test_size)
        for (x, y), n in zip(_parts(t), sizes, strict=True):
            assert x.shape == (n, 1) and y.shape == (n, 1)
            assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
            assert float(x.abs().max()) <= 4.0


def test_noise_model() -> None:
    clean, noisy = Bumps(noise=0.0), Bumps(noise=0.3)
    for split in SPLITS:
        c, n = clean.task(split, 5), noisy.task(split, 5)
        p = noisy.task_params(split, 5)
        # the same parameters and inputs whatever the noise level
        for (xc, _), (xn, _) in zip(_parts(c), _parts(n), strict=True):
            assert torch.equal(xc, xn)
        # test targets are noise-free; train / val are noisy
        assert torch.allclose(n.y_test, _truth(n.x_test, p), atol=1e-6)
        assert torch.allclose(c.y_train, _truth(c.x_train, p), atol=1e-6)
        assert not torch.allclose(n.y_train, _truth(n.x_train, p), atol=1e-3)
        assert not torch.allclose(n.y_val, _truth(n.x_val, p), atol=1e-3)
    # heteroscedastic: residual std / (1 + |x|/4) recovers the noise level on many episodes
    f = Bumps(shots=200, queries=1, noise=0.2)
    b = f.sample("train", 100, torch.Generator().manual_seed(0))
    p = f.params("train", 100, torch.Generator().manual_seed(0))  # drawn first: the same tasks
    x, y = b.xs.double(), b.ys.double()
    z = (y - Bumps.function(x, p)) / (1 + x.abs() / 4)
    assert abs(float(z.std()) - 0.2) < 0.01
    r = (y - Bumps.function(x, p)).abs()
    assert float(r[x.abs() > 3].mean()) > 1.5 * float(r[x.abs() < 1].mean())


@pytest.mark.parametrize(
    "opts",
    [
        {"noise": -0.1},
        {"noise": float("nan")},
        {"noise": True},
        {"noise": "0.1"},
        {"shots": 0},
        {"test_size": 2.5},
    ],
)
def test_bad_options_refused(opts: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Bumps(**opts)  # type: ignore[arg-type]


def test_bad_split_and_index_refused() -> None:
    with pytest.raises(ConfigError):
        Bumps().task("meta", 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Bumps().task("train", -1)


def test_meta_train_runs_without_ray() -> None:
    seen: list[dict[str, float]] = []
    cfg = MetaTrainConfig(family="bench_families:Bumps", model="mlp", steps=20, meta_batch=4)
    tr = meta_train(cfg, progress=lambda step, m: seen.append(m), log_every=1)
    assert tr.step == 20 and len(seen) == 20
    assert all(math.isfinite(m["meta_loss"]) for m in seen)
    assert math.isfinite(seen[-1]["val_loss"])
    assert all(bool(torch.isfinite(v).all()) for v in tr.params.values())
    ck = tr.to_checkpoint()
    assert ck.family.name == "bench_families:Bumps" and ck.family.options == Bumps().options()
