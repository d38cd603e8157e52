"""Model zoo: small networks that run under ``torch.func.vmap``.

Every model splits into a ``body`` and a ``head`` (a final ``nn.Linear`` named ``head``), so
ANIL and head-only fine-tuning can select parameters by the ``head.`` prefix. Normalisation
never keeps running statistics (GroupNorm, or BatchNorm with ``track_running_stats=False``):
buffers mutated in place do not survive ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from raymeta.errors import ConfigError

HEAD_PREFIX = "head."


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
        return cls(
            name=str(d["name"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),
            output_dim=int(d["output_dim"]),
            options=dict(d.get("options", {})),
        )


class MLP(nn.Module):
    """Fully connected ReLU network; the MAML sinusoid model is ``MLP(1, (40, 40), 1)``."""

    def __init__(
        self, input_shape: Sequence[int], output_dim: int, widths: Sequence[int] = (40, 40)
    ):
        super().__init__()
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
        with torch.no_grad():
            try:
                feat = self.body(torch.zeros(1, *input_shape)).shape[-1]
            except (ValueError, RuntimeError) as exc:  # e.g. 1 value per GroupNorm group
                raise ConfigError(
                    f"conv4 with hidden={hidden}, norm={norm!r} does not fit inputs of shape "
                    f"{tuple(input_shape)}: {str(exc).splitlines()[0]}"
                ) from None
        self.head = nn.Linear(feat, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {"mlp": MLP, "conv4": Conv4}


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec``; unknown names or options give a one-line ``ConfigError``."""
    try:
        factory = MODELS[spec.name]
    except KeyError:
        raise ConfigError(
            f"unknown model {spec.name!r} (choose from {', '.join(sorted(MODELS))})"
        ) from None
    try:
        return factory(spec.input_shape, spec.output_dim, **spec.options)
    except TypeError as exc:
        raise ConfigError(f"bad options for model {spec.name!r}: {exc}") from None


def head_keys(names: Sequence[str]) -> list[str]:
    """Names of head parameters (what ANIL and head-only fine-tuning adapt)."""
    return [n for n in names if n.startswith(HEAD_PREFIX)]
