"""Per-kind losses and metrics, shared by the engine, the population trainer and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from raymeta.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_example_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss of each example (shape ``[N]``): squared error summed over outputs, or cross-entropy."""
    if kind == "regression":
        return ((out - y.reshape(out.shape)) ** 2).sum(-1)
    if kind == "classification":
        return F.cross_entropy(out, y.long(), reduction="none")
    raise ConfigError(f"unknown task kind {kind!r}")


def loss_fn(kind: str) -> LossFn:
    """Mean loss over examples: MSE for regression (the MAML paper's metric), CE for classification."""
    if kind not in ("regression", "classification"):
        raise ConfigError(f"unknown task kind {kind!r}")

    if kind == "classification":

        def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y.long())

        return ce

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # == per_example_loss(...).mean() with one reduction instead of two: every op counts
        # in the inner loop, where it is differentiated twice for each step (second order)
        d = out - (y if y.shape == out.shape else y.reshape(out.shape))
        return (d * d).sum() / out.shape[0]

    return mse


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(-1) == y.long()).float().mean(-1)
