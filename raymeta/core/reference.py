"""Looped, vmap-free reference implementation of the meta-learning engine.

The engine (``engine.py``) batches tasks with ``torch.func.vmap``. This module computes the
same quantities the slow, obvious way -- one task at a time, with plain ``torch.autograd.grad``
-- so tests can check the fast path against it and ``raymeta bench engine`` can measure the
speed-up over it. It deliberately shares no code with the fast path except the model's
functional forward (``torch.func.functional_call``); losses are re-derived here. The
fine-tuning population's reference is ``raymeta.finetune.reference``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raymeta.tasks.base import TaskBatch

Params = dict[str, torch.Tensor]


def ref_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE (squared error summed over outputs, averaged over examples) or mean cross-entropy."""
    if kind == "regression":
        return ((out - y.reshape(out.shape)) ** 2).sum(-1).mean()
    return F.cross_entropy(out, y.long())


def head_names(names: Sequence[str]) -> list[str]:
    """The ``head.*`` parameters (what ANIL adapts and head-only fine-tuning trains)."""
    return [n for n in names if n.startswith("head.")]


def ref_adapt_trace(
    model: nn.Module,
    kind: str,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    algo: str = "maml",
    first_order: bool = False,
    learn_lr: bool = False,
) -> list[Params]:
    """Inner loop for ONE task with ``torch.autograd.grad``; the graph back to ``params`` is
    kept (``create_graph``) unless ``first_order``. Meta-SGD reads rates from ``lr.<name>``,
    MAML++'s LSLR (``learn_lr``) step ``i``'s rate from ``lslr.<name>[i]``. Returns the fast
    weights after every step (the last is the adapted model; MSL needs them all)."""
    names = [n for n, _ in model.named_parameters()]
    keys = head_names(names) if algo == "anil" else names
    fast = {n: params[n] for n in names}
    trace = [fast]
    for i in range(steps):
        loss = ref_loss(kind, functional_call(model, fast, (x,)), y)
        grads = torch.autograd.grad(loss, [fast[k] for k in keys], create_graph=not first_order)
        new = dict(fast)
        for k, g in zip(keys, grads, strict=True):
            if algo == "metasgd":
                rate: torch.Tensor | float = params["lr." + k]
            elif learn_lr:
                rate = params["lslr." + k][i]
            else:
                rate = lr
            new[k] = fast[k] - rate * g
        fast = new
        trace.append(fast)
    return trace


def ref_adapt(
    model: nn.Module,
    kind: str,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    algo: str = "maml",
    first_order: bool = False,
    learn_lr: bool = False,
) -> Params:
    """The adapted weights of ``ref_adapt_trace`` (after the last inner step)."""
    trace = ref_adapt_trace(model, kind, params, x, y, steps, lr, algo, first_order, learn_lr)
    return trace[-1]


def ref_meta_grad(
    model: nn.Module,
    kind: str,
    algo: str,
    params: Mapping[str, torch.Tensor],
    batch: TaskBatch,
    steps: int,
    lr: float,
    first_order: bool = False,
    learn_lr: bool = False,
    step_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, Params]:
    """Mean query loss and mean meta-gradient, looping over the tasks of ``batch`` in Python.

    Reptile's "gradient" is the mean of ``params - adapted`` (SGD-adapted, no graph);
    ``pretrain`` (multi-task pretraining) has no inner loop. ``learn_lr``: LSLR rates
    ``lslr.<name>`` in ``params``; ``step_weights``: MAML++'s multi-step loss, the task loss is
    ``sum_i w_i * query_loss(after step i+1)``."""
    n = batch.n_tasks
    total = torch.zeros((), dtype=batch.xs.dtype)
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    fo = first_order or algo in ("fomaml", "reptile")
    for i in range(n):
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        if algo == "pretrain":  # no inner loop: the shared weights on support and query rows
            x = torch.cat([batch.xs[i], batch.xq[i]])
            y = torch.cat([batch.ys[i], batch.yq[i]])
            qloss = ref_loss(kind, functional_call(model, leaf, (x,)), y)
        else:
            trace = ref_adapt_trace(
                model, kind, leaf, batch.xs[i], batch.ys[i], steps, lr, algo, fo, learn_lr
            )
            fast = trace[-1]
            if step_weights is None:
                qloss = ref_loss(kind, functional_call(model, fast, (batch.xq[i],)), batch.yq[i])
            else:
                qloss = sum(
                    (
                        w * ref_loss(kind, functional_call(model, f, (batch.xq[i],)), batch.yq[i])
                        for w, f in zip(step_weights, trace[1:], strict=True)
                    ),
                    start=torch.zeros((), dtype=batch.xs.dtype),
                )
        total = total + qloss.detach()
        if algo == "reptile":
            for k in fast:
                acc[k] += (leaf[k] - fast[k]).detach()
            continue
        keys = list(leaf)
        grads = torch.autograd.grad(qloss, [leaf[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads, strict=True):
            if g is not None:
                acc[k] += g
    return total / n, {k: v / n for k, v in acc.items()}
