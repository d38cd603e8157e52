"""Built-in models are sized without running them: ``footprint`` walks their layers and Conv4
computes its feature size, because a forward pass on the meta device imports torch's meta
kernels (seconds in every process that loads a checkpoint). The reference here is a real
forward pass on the CPU: the parameter and activation counts of forward hooks, and whether a
one-example forward raises."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from raymeta.core.models import ModelSpec, build_model, footprint
from raymeta.errors import ConfigError


def _hooked(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    acts = [0]

    def count(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            acts[0] += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(2, *shape))
    for h in hooks:
        h.remove()
    return sum(p.numel() for p in model.parameters()), acts[0] // 2


MLPS = [((1,), 1, [40, 40]), ((28, 28), 5, [128, 64, 32]), ((3, 4, 5), 7, []), ((784,), 20, [1])]


@pytest.mark.parametrize(("shape", "out", "widths"), MLPS)
def test_mlp_footprint_equals_a_real_forward(shape: tuple, out: int, widths: list) -> None:
    spec = ModelSpec("mlp", shape, out, {"widths": widths})
    assert footprint(spec) == _hooked(build_model(spec), shape)


CONVS = [
    ((1, 28, 28), 5, 64, "group"),
    ((1, 28, 28), 20, 32, "batch"),
    ((3, 84, 84), 5, 32, "none"),
    ((2, 9, 13), 3, 24, "group"),
    ((1, 1, 1), 2, 16, "group"),
    ((3, 17, 5), 4, 8, "batch"),
]


@pytest.mark.parametrize(("shape", "out", "hidden", "norm"), CONVS)
def test_conv4_footprint_equals_a_real_forward(
    shape: tuple, out: int, hidden: int, norm: str
) -> None:
    spec = ModelSpec("conv4", shape, out, {"hidden": hidden, "norm": norm})
    assert footprint(spec) == _hooked(build_model(spec), shape)


def _reference_body(channels: int, hidden: int, norm: str) -> nn.Sequential:
    """Conv4's body written out independently of ``raymeta.core.models``."""
    layers: list[nn.Module] = []
    for _ in range(4):
        if norm == "group":
            nm: nn.Module = nn.GroupNorm(min(8, hidden), hidden)
        elif norm == "batch":
            nm = nn.BatchNorm2d(hidden, track_running_stats=False)
        else:
            nm = nn.Identity()
        layers += [
            nn.Conv2d(channels, hidden, 3, padding=1),
            nm,
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        channels = hidden
    return nn.Sequential(*layers, nn.Flatten(start_dim=-3))


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize("hidden", [1, 4, 8, 16])
@pytest.mark.parametrize(
    "size", [(1, 1), (1, 2), (2, 2), (3, 1), (8, 8), (9, 9), (16, 16), (17, 3)]
)
def test_conv4_refuses_exactly_what_a_one_example_forward_refuses(
    norm: str, hidden: int, size: tuple[int, int]
) -> None:
    shape = (2, *size)
    try:
        with torch.no_grad():
            want: int | None = _reference_body(2, hidden, norm)(torch.zeros(1, *shape)).shape[-1]
    except (ValueError, RuntimeError):
        want = None
    spec = ModelSpec("conv4", shape, 3, {"hidden": hidden, "norm": norm})
    if want is None:
        with pytest.raises(ConfigError, match="does not fit inputs of shape"):
            build_model(spec)
    else:
        assert build_model(spec).head.in_features == want


def test_sizing_and_loading_built_ins_import_no_meta_kernels() -> None:
    """The regression this guards: a meta-device forward imported sympy and the symbolic-shape
    machinery (~800 modules, 2-5 s) in every process that checked a model's size."""
    code = (
        "import sys\n"
        "from raymeta.core.models import ModelSpec, footprint, build_model\n"
        "footprint(ModelSpec('conv4', (1, 28, 28), 5, {'hidden': 64}))\n"
        "footprint(ModelSpec('mlp', (784,), 5, {'widths': [128, 128]}))\n"
        "build_model(ModelSpec('conv4', (1, 28, 28), 5, {}))\n"
        "assert 'sympy' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
