"""Model zoo: small networks that run under ``torch.func.vmap``.

Every model splits into a ``body`` and a ``head`` (a final ``nn.Linear`` named ``head``), so
ANIL and head-only fine-tuning can select parameters by the ``head.`` prefix. Normalisation
never keeps running statistics (GroupNorm, or BatchNorm with ``track_running_stats=False``):
buffers mutated in place do not survive ``vmap``. GroupNorm is the default because BatchNorm,
LayerNorm and InstanceNorm get a wrong *second-order* gradient under ``vmap`` in this torch
(pytorch/functorch#534): ``conv4 norm=batch`` is refused for MAML / Meta-SGD by meta-train's
preflight (``core.contract.check_second_order``) and is fine for the first-order algorithms.

Models that are not built in are named by import path (``raymeta.plugins``); the contract they
must meet is checked by ``raymeta.testing.check_model``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from raymeta import checks
from raymeta.errors import ConfigError

HEAD_PREFIX = "head."
MAX_LAYERS = 64


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a registry name, its keyword options, and the task's I/O shape."""

    name: str
    input_shape: tuple[int, ...]
    output_dim: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec from ``meta.json``; wrong types or sizes are one-line ``ConfigError``s."""
        d = checks.mapping("model spec", d)
        shape = d.get("input_shape")
        if not isinstance(shape, (list, tuple)) or not shape or len(shape) > 8:
            raise ConfigError(
                f"model spec input_shape must be a list of 1 to 8 sizes, got {shape!r}"
            )
        return cls(
            name=checks.string("model spec name", d.get("name")),
            input_shape=tuple(checks.integer("model spec input_shape", v, 1) for v in shape),
            output_dim=checks.integer("model spec output_dim", d.get("output_dim"), 1),
            options=checks.mapping("model spec options", d.get("options", {})),
        )


class MLP(nn.Module):
    """Fully connected ReLU network; the MAML sinusoid model is ``MLP(1, (40, 40), 1)``."""

    def __init__(
        self, input_shape: Sequence[int], output_dim: int, widths: Sequence[int] = (40, 40)
    ):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise ConfigError(f"mlp: widths must be a list of layer sizes, got {widths!r}")
        if len(widths) > MAX_LAYERS:
            raise ConfigError(f"mlp: at most {MAX_LAYERS} hidden layers, got {len(widths)}")
        widths = [checks.integer("mlp: each of widths", w, 1) for w in widths]
        in_dim = 1
        for d in input_shape:
            in_dim *= int(d)
        layers: list[nn.Module] = [nn.Flatten(start_dim=-len(input_shape))]
        for w in widths:
            layers += [nn.Linear(in_dim, int(w)), nn.ReLU()]
            in_dim = int(w)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r} for conv4 (choose group, batch or none)")


class Conv4(nn.Module):
    """The four-block convolutional net of MAML / ProtoNets (3x3 conv, norm, ReLU, 2x2 pool)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        output_dim: int,
        hidden: int = 32,
        norm: str = "group",
    ):
        super().__init__()
        hidden = checks.integer("conv4: hidden", hidden, 1)
        checks.string("conv4: norm", norm, ("group", "batch", "none"))
        if len(input_shape) != 3:
            raise ConfigError(
                f"conv4 needs (channels, height, width) inputs, got shape {tuple(input_shape)}"
            )
        blocks: list[nn.Module] = []
        ch = int(input_shape[0])
        for _ in range(4):
            blocks += [
                nn.Conv2d(ch, hidden, 3, padding=1),
                _norm(norm, hidden),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            ch = hidden
        blocks.append(nn.Flatten(start_dim=-3))
        self.body = nn.Sequential(*blocks)
        feat = _conv4_features(tuple(int(d) for d in input_shape), hidden, norm)
        self.head = nn.Linear(feat, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _conv4_features(input_shape: tuple[int, ...], hidden: int, norm: str) -> int:
    """Conv4's flattened feature size, computed rather than run: a forward pass on the meta
    device (where ``footprint`` builds models) imports torch's meta kernels, seconds in every
    process that loads a checkpoint. Refuses, as that forward on one example would, a block
    whose norm would see one value per group (GroupNorm) or channel (BatchNorm)."""
    _, h, w = input_shape
    for block in range(1, 5):
        values = h * w * (hidden // min(8, hidden) if norm == "group" else 1)
        if norm != "none" and values == 1:
            raise ConfigError(
                f"conv4 with hidden={hidden}, norm={norm!r} does not fit inputs of shape "
                f"{input_shape}: block {block}'s {norm} norm would see 1 value per "
                f"{'group' if norm == 'group' else 'channel'}"
            )
        h, w = -(-h // 2), -(-w // 2)  # 2x2 max-pool, ceil mode
    return hidden * h * w


ModelFactory = Callable[..., nn.Module]

BUILTIN_MODELS = ("mlp", "conv4")
# name -> factory; a user may add to it in-process, but what a checkpoint stores for such a
# model is its import path (``raymeta.plugins.canonical``), so Ray workers can rebuild it
MODELS: dict[str, ModelFactory] = {"mlp": MLP, "conv4": Conv4}


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec`` (a built-in name, a plugin name or an import path); an unknown name,
    bad options or a factory that raises give a one-line ``ConfigError``."""
    from raymeta.plugins import construct, short_name

    model = construct("model", spec.name, spec.input_shape, spec.output_dim, **spec.options)
    label = short_name(spec.name)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {label!r} must build a torch.nn.Module, its factory returned a "
            f"{type(model).__name__}"
        )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _skeleton(spec: ModelSpec) -> nn.Module:
    """The model on the meta device (nothing allocated); a user's factory that cannot build
    there (it reads values while it initialises) is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return build_model(spec)
    except ConfigError:
        if spec.name in BUILTIN_MODELS:
            raise
    return build_model(spec)


def footprint(spec: ModelSpec) -> tuple[int, int]:
    """(parameters, activation values per example) of ``spec``, measured on the meta device.

    Nothing is allocated, so a spec of 2**40 outputs or ``widths=[10**9]`` is sized without
    being built; callers compare the result with the machine's memory (``checks.check_fits``)
    before they build the real model. A user's model whose forward cannot run on the meta
    device is measured on the CPU instead."""
    model = _skeleton(spec)
    if type(model) in (MLP, Conv4):  # sized by walking its layers: no meta-device forward
        return sum(p.numel() for p in model.parameters()), _builtin_activations(model, spec)
    try:
        return _count(model, spec)
    except ConfigError:
        on_meta = any(p.is_meta for p in model.parameters())
        if spec.name in BUILTIN_MODELS or not on_meta:
            raise
    return _count(build_model(spec), spec)


def _builtin_activations(model: nn.Module, spec: ModelSpec) -> int:
    return builtin_activations(model, spec.input_shape)


def builtin_activations(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Values per example that a built-in model's leaf modules output (what ``_count``'s hooks
    would sum), from the layer types alone; ``tests/test_models_footprint.py`` checks it
    against a real forward. Also sizes the engine's folded chunks on the CPU."""
    shape = tuple(int(d) for d in input_shape)
    total = 0
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(m, nn.Linear):
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            shape = (m.out_channels, *shape[1:])  # 3x3, padding 1: the same height and width
        elif isinstance(m, nn.MaxPool2d):
            shape = (shape[0], *(-(-d // 2) for d in shape[1:]))
        elif not isinstance(m, (nn.ReLU, nn.GroupNorm, nn.BatchNorm2d, nn.Identity)):
            raise TypeError(f"unexpected layer {type(m).__name__} in a built-in model")
        total += math.prod(shape)
    return total


def _count(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    acts = [0]

    def count(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            acts[0] += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():  # 2 examples: BatchNorm refuses a batch of 1 in training mode
            model(torch.zeros(2, *spec.input_shape, device=device))
    except Exception as exc:
        raise ConfigError(
            f"model {_label(spec)!r} does not run on inputs of shape {tuple(spec.input_shape)}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for p in model.parameters()), acts[0] // 2


def _label(spec: ModelSpec) -> str:
    from raymeta.plugins import short_name

    return short_name(spec.name)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of ``spec`` (built on the meta device: nothing allocated)."""
    return {n: tuple(p.shape) for n, p in _skeleton(spec).named_parameters()}


def check_model_fits(spec: ModelSpec, copies: int = 8, what: str = "") -> int:
    """Refuse a model whose ``copies`` float32 copies of the parameters exceed the machine's
    memory (weights, gradients, optimizer moments, snapshots); returns the parameter count."""
    n_params, _ = footprint(spec)
    checks.check_fits(
        what or f"model {spec.name!r} ({n_params:,} parameters)", n_params * 4.0 * copies
    )
    return n_params


def head_keys(names: Sequence[str]) -> list[str]:
    """Names of head parameters (what ANIL and head-only fine-tuning adapt)."""
    return [n for n in names if n.startswith(HEAD_PREFIX)]
