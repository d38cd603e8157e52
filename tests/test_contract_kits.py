"""The contract kits (``raymeta.testing``): every built-in model and family passes them, and
real broken plug-ins -- defined here the way a user would write them -- fail with a one-line
``ContractError`` that names the broken rule and the fix."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from raymeta.core.models import MLP, Conv4
from raymeta.errors import ConfigError
from raymeta.tasks import Split, Task, TaskBatch, TaskFamily, make_family
from raymeta.tasks.digits import Digits
from raymeta.tasks.parquet import write_tasks
from raymeta.tasks.sinusoid import Sinusoid
from raymeta.testing import ContractError, check_model, check_model_runs, check_task_family


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The checks run tiny models: one intra-op thread is as fast alone and far faster when
    other processes share the CPU (OpenMP threads spin against each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fails(rule: str, match: str, fn: Any, *args: Any) -> ContractError:
    """``fn(*args)`` raises a one-line ContractError for ``rule`` whose message matches."""
    with pytest.raises(ContractError, match=match) as info:
        fn(*args)
    err = info.value
    assert err.rule == rule, str(err)
    assert "\n" not in str(err) and f"breaks the {rule!r} rule" in str(err) and "fix:" in str(err)
    return err


# ============================================================================ models


def _flat(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


class Tiny(nn.Module):
    """A well-behaved user model: a body and a ``head``."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), width), nn.Tanh())
        self.head = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class RunningStats(Tiny):
    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__(input_shape, output_dim)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), 8), nn.BatchNorm1d(8))


class NoHead(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), 8), nn.ReLU())
        self.out = nn.Linear(8, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x))


class WrongShape(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(-1)


class Counter(Tiny):
    """Counts forward calls in a buffer: state that vmapped tasks would race on."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__(input_shape, output_dim)
        self.calls: torch.Tensor
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return super().forward(x)


class NumpyInit(Tiny):
    """Initialises from numpy's global RNG: every Ray worker would start elsewhere."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__(input_shape, output_dim)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.random.randn(*self.head.weight.shape)))


class Dropout(Tiny):
    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__(input_shape, output_dim)
        self.body.append(nn.Dropout(0.5))


class TupleOnly(Tiny):
    """Accepts ``widths`` only as a tuple: fails once the options come back from meta.json."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int, widths: Any = (8,)) -> None:
        if not isinstance(widths, tuple):
            raise TypeError(f"widths must be a tuple, got {type(widths).__name__}")
        super().__init__(input_shape, output_dim, widths[0])


def raising_factory(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    raise ValueError("no GPU kernel for this shape\nsecond line never shown")


def not_a_module(input_shape: tuple[int, ...], output_dim: int) -> Any:
    return lambda x: x


@pytest.mark.parametrize(
    ("factory", "shape", "out", "options"),
    [
        (MLP, (1,), 1, None),
        ("mlp", (3, 8, 8), 5, {"widths": [16, 16]}),
        (MLP, (4,), 3, {"widths": (8,)}),  # a tuple survives JSON (MLP takes lists too)
        (Conv4, (1, 28, 28), 5, {"norm": "group", "hidden": 16}),
        ("conv4", (1, 8, 8), 5, {"norm": "none", "hidden": 8}),
        (Conv4, (3, 8, 8), 4, {"norm": "group", "hidden": 16}),
        (Tiny, (2,), 2, {"width": 4}),
    ],
    ids=["mlp-1", "mlp-3x8x8", "mlp-tuple", "conv4-group", "conv4-none", "conv4-rgb", "user"],
)
def test_built_in_and_good_models_pass(
    factory: Any, shape: tuple[int, ...], out: int, options: dict[str, Any] | None
) -> None:
    check_model(factory, shape, out, options)


def test_conv4_with_batch_norm_fails_the_vmap_rule() -> None:
    """Legitimately: vmap gets batch_norm's second-order gradient wrong even without running
    statistics (pytorch/functorch#534), so conv4's ``norm="batch"`` is not meta-trainable with
    second-order MAML; the kit says to use GroupNorm."""
    _fails(
        "vmap",
        "functorch#534.*GroupNorm",
        check_model,
        Conv4,
        (1, 16, 16),
        5,
        {"norm": "batch", "hidden": 8},
    )


def test_layer_norm_fails_the_vmap_rule() -> None:
    def ln_net(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
        m = Tiny(input_shape, output_dim)
        m.body.append(nn.LayerNorm(8))
        return m

    _fails("vmap", "LayerNorm.*GroupNorm\\(1, C\\)", check_model, ln_net, (3,), 2)


@pytest.mark.parametrize(
    ("factory", "options", "rule", "match"),
    [
        (
            RunningStats,
            None,
            "no-running-stats",
            "BatchNorm1d 'body.2'.*GroupNorm, or pass track_running_stats=False",
        ),
        (NoHead, None, "head", "no parameter is named 'head.'.*self.head"),
        (WrongShape, None, "forward", r"returned shape \(3,\), expected \(3, 1\)"),
        (raising_factory, None, "builds", "raised ValueError: no GPU kernel for this shape;"),
        (not_a_module, None, "module", "returned a function.*torch.nn.Module"),
        (Tiny, {"act": nn.ReLU}, "options", r"options\['act'\] is a type.*meta.json"),
        (Tiny, {"width": float("nan")}, "options", "nan"),
        (Counter, None, "no-mutated-buffers", "buffer 'calls'"),
        (NumpyInit, None, "deterministic", "differ in 'head.weight'.*torch's global RNG"),
        (TupleOnly, {"widths": (8,)}, "options-round-trip", "read back from JSON raised TypeError"),
        (Dropout, None, "vmap", "random"),
    ],
    ids=lambda v: v.__name__ if callable(v) and hasattr(v, "__name__") else None,
)
def test_broken_models_fail_with_the_rule_and_fix(
    factory: Any, options: dict[str, Any] | None, rule: str, match: str
) -> None:
    _fails(rule, match, check_model, factory, (1,), 1, options)


def test_the_message_of_a_raising_factory_shows_its_first_line_only() -> None:
    err = _fails("builds", "ValueError", check_model, raising_factory, (1,), 1)
    assert "second line" not in str(err)


def test_a_string_name_goes_through_build_model() -> None:
    _fails("builds", "unknown model 'no-such-net'", check_model, "no-such-net", (1,), 1)


def test_bad_arguments_and_error_type() -> None:
    with pytest.raises(ContractError, match="input_shape must be a tuple"):
        check_model(Tiny, (0,), 1)
    with pytest.raises(ContractError, match="pass the model's class or factory, not a built"):
        check_model(Tiny((1,), 1), (1,), 1)  # type: ignore[arg-type]
    err = ContractError("x breaks the 'head' rule: ...", "head")
    assert isinstance(err, ConfigError)
    again = pickle.loads(pickle.dumps(err))  # crosses Ray / process boundaries intact
    assert (str(again), again.rule) == (str(err), "head")


def test_check_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    check_model(Tiny, (1,), 1)
    assert torch.equal(state, torch.get_rng_state())


def test_check_model_runs_is_the_cheap_preflight() -> None:
    model = Conv4((1, 28, 28), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_runs(model, (1, 28, 28), 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for bad, rule in (
        (RunningStats((1,), 1), "no-running-stats"),
        (WrongShape((1,), 1), "forward"),
    ):
        with pytest.raises(ConfigError) as info:
            check_model_runs(bad, (1,), 1)
        assert isinstance(info.value, ContractError) and info.value.rule == rule
    with pytest.raises(ContractError, match="vmap"):
        check_model_runs(Dropout((1,), 1), (1,), 1)


# ============================================================================ task families


class Toy(TaskFamily):
    """A well-behaved user family: y = a * x with ``a`` drawn per task; the meta-split is encoded
    in the slope's sign and band, so splits never share a task."""

    name = "toy"
    kind = "regression"
    input_shape = (2,)
    output_dim = 1
    BAND = {"train": 1.0, "val": 3.0, "test": 5.0}

    def __init__(self, shots: int = 4, queries: int = 3, task_size: int = 5) -> None:
        self.shots, self.queries, self.task_size = shots, queries, task_size

    def options(self) -> dict[str, Any]:
        return {"shots": self.shots, "queries": self.queries, "task_size": self.task_size}

    def _episodes(
        self, split: str, n: int, sizes: list[int], g: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        a = self.BAND[split] + torch.rand(n, 1, 1, generator=g)
        out = []
        for k in sizes:
            x = torch.randn(n, k, 2, generator=g)
            out.append((x, a * x.sum(-1, keepdim=True)))
        return out

    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        (xs, ys), (xq, yq) = self._episodes(split, n_tasks, [self.shots, self.queries], generator)
        return TaskBatch(xs, ys, xq, yq)

    def _seed(self, split: str, index: int) -> int:
        return 1000 * index + list(self.BAND).index(split)

    def _task(self, split: str, index: int, g: torch.Generator) -> Task:
        (xt, yt), (xv, yv), (xe, ye) = self._episodes(split, 1, [self.task_size] * 3, g)
        return Task(
            f"toy:{split}:{index}", xt[0], yt[0], xv[0], yv[0], xe[0], ye[0], "regression", 1
        )

    def task(self, split: Any, index: int) -> Task:
        return self._task(split, index, torch.Generator().manual_seed(self._seed(split, index)))


class RandomTask(Toy):
    def task(self, split: Any, index: int) -> Task:
        return self._task(split, index, torch.default_generator)


class SharedIds(Toy):
    """Ignores the split: task ``i`` is the same task in train, val and test."""

    def task(self, split: Any, index: int) -> Task:
        return super().task("train", index)


class SameDataOtherIds(Toy):
    def task(self, split: Any, index: int) -> Task:
        t = super().task("train", index)
        t.task_id = f"toy:{split}:{index}"
        return t


class ChangingShapes(Toy):
    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        shots = self.shots + (split == "val")  # meta-val episodes one example longer
        (xs, ys), (xq, yq) = self._episodes(split, n_tasks, [shots, self.queries], generator)
        return TaskBatch(xs, ys, xq, yq)


class GlobalRng(Toy):
    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return super().sample(split, n_tasks, torch.default_generator)


class ForgetsAnOption(Toy):
    def options(self) -> dict[str, Any]:
        return {"shots": self.shots, "queries": self.queries}  # task_size missing


class NonJsonOptions(Toy):
    def options(self) -> dict[str, Any]:
        return {**super().options(), "transform": np.float32}


class FlatTargets(Toy):
    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        b = super().sample(split, n_tasks, generator)
        return TaskBatch(b.xs, b.ys[..., 0], b.xq, b.yq[..., 0])


class ClaimsABuiltInName(Toy):
    """Named like a built-in: a worker rebuilding ``spec()`` would get a Sinusoid instead."""

    name = "sinusoid"
    input_shape = (1,)

    def _episodes(
        self, split: str, n: int, sizes: list[int], g: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x[..., :1], y) for x, y in super()._episodes(split, n, sizes, g)]


class OverlappingClasses(Digits):
    """Digits whose meta-val classes include two meta-train classes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.classes = {
            **self.classes,
            "val": torch.cat([self.classes["val"], self.classes["train"][:2]]),
        }


class LabelsOutOfRange(Digits):
    def sample(self, split: Any, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        b = super().sample(split, n_tasks, generator)
        return TaskBatch(b.xs, b.ys + 1, b.xq, b.yq + 1)


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("sinusoid", None),
        (Sinusoid(shots=3, queries=2, task_shots=4), None),
        ("digits", {"ways": 5, "shots": 1, "queries": 2}),
        (Digits, {"rotations": False, "ways": 3}),
        (Toy(), None),
        (Toy, {"shots": 2}),
    ],
    ids=["sinusoid", "sinusoid-instance", "digits", "digits-plain", "user", "user-factory"],
)
def test_built_in_and_good_families_pass(family: Any, options: dict[str, Any] | None) -> None:
    check_task_family(family, options)


def test_omniglot_passes(omniglot_dir: Path) -> None:
    check_task_family("omniglot", {"path": str(omniglot_dir), "ways": 5, "shots": 1, "queries": 2})


def test_parquet_families_pass(tmp_path: Path) -> None:
    sin = Sinusoid(task_shots=6, val_size=6, test_size=3)
    tasks = [sin.task("train", i) for i in range(10)]
    split = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    write_tasks(tmp_path / "reg.parquet", tasks, meta_split=split)
    check_task_family("parquet", {"path": str(tmp_path / "reg.parquet"), "shots": 3, "queries": 4})

    dig = Digits(rotations=False, ways=3, task_shots=3, val_size=4, test_size=2)
    counts: tuple[tuple[Split, int], ...] = (("train", 4), ("val", 2), ("test", 2))
    tasks = [dig.task(s, i) for s, n in counts for i in range(n)]
    split = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    write_tasks(tmp_path / "cls.parquet", tasks, meta_split=split)
    fam = make_family("parquet", path=str(tmp_path / "cls.parquet"), shots=3, queries=4)
    assert fam.kind == "classification"
    check_task_family(fam)


@pytest.mark.parametrize(
    ("family", "rule", "match"),
    [
        (RandomTask(), "task-determinism", r"task\('train', 0\) gave different tasks"),
        (SharedIds(), "disjoint", "task id 'toy:train:0' is in meta-splits train:0 and val:0"),
        (
            SameDataOtherIds(),
            "disjoint",
            r"task\('train', 0\) and task\('val', 0\) hold the same data",
        ),
        (
            OverlappingClasses(rotations=False, ways=3),
            "disjoint",
            "classes .* both meta-splits 'train' and 'val'",
        ),
        (ChangingShapes(), "sample", "support/query sizes change between calls .*val/3: S=5"),
        (GlobalRng(), "sample-rng", "global RNG"),
        (
            ForgetsAnOption(task_size=7),
            "round-trip",
            "task\\('train', 0\\) differs.*every constructor argument",
        ),
        (NonJsonOptions(), "options", r"options\(\)\['transform'\] is a type"),
        (FlatTargets(), "sample", r"targets have shape \(3, 4\), expected \(3, 4, 1\)"),
        (
            LabelsOutOfRange(rotations=False, ways=3),
            "sample",
            r"labels span \[1, 3\], outside \[0, output_dim=3\)",
        ),
        (object(), "is-family", "pass a TaskFamily"),
        (ClaimsABuiltInName(), "round-trip", "name 'sinusoid' is a built-in family's"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else None,
)
def test_broken_families_fail_with_the_rule_and_fix(family: Any, rule: str, match: str) -> None:
    _fails(rule, match, check_task_family, family)


def test_a_raising_family_factory_fails_to_build() -> None:
    _fails(
        "builds",
        "raised ConfigError: sinusoid: shots must be",
        check_task_family,
        "sinusoid",
        {"shots": 0},
    )
    _fails("options", r"options\['shots'\] is a set", check_task_family, Toy, {"shots": {1}})


def test_testing_module_does_not_import_ray() -> None:
    code = "import sys, raymeta.testing; sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
