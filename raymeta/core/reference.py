"""Looped, vmap-free reference implementations of the engine and the population trainer.

The engine (``engine.py``) and the population trainer (``population.py``) batch tasks and
members with ``torch.func.vmap``. This module computes the same quantities the slow, obvious
way -- one task (or member) at a time, with plain ``torch.autograd.grad`` and ``torch.optim`` --
so tests can check the fast paths against it and ``raymeta bench engine`` can measure the
speed-up over it. It deliberately shares no code with the fast paths except the model's
functional forward (``torch.func.functional_call``); losses are re-derived here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raymeta.tasks.base import TaskBatch

Params = dict[str, torch.Tensor]
_P = 2**31 - 1


def ref_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE (squared error summed over outputs, averaged over examples) or mean cross-entropy."""
    if kind == "regression":
        return ((out - y.reshape(out.shape)) ** 2).sum(-1).mean()
    return F.cross_entropy(out, y.long())


def _head(names: Sequence[str]) -> list[str]:
    return [n for n in names if n.startswith("head.")]


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
) -> Params:
    """Inner loop for ONE task with ``torch.autograd.grad``; the graph back to ``params`` is
    kept (``create_graph``) unless ``first_order``. Meta-SGD reads rates from ``lr.<name>``."""
    names = [n for n, _ in model.named_parameters()]
    keys = _head(names) if algo == "anil" else names
    fast = {n: params[n] for n in names}
    for _ in range(steps):
        loss = ref_loss(kind, functional_call(model, fast, (x,)), y)
        grads = torch.autograd.grad(loss, [fast[k] for k in keys], create_graph=not first_order)
        new = dict(fast)
        for k, g in zip(keys, grads, strict=True):
            rate = params["lr." + k] if algo == "metasgd" else lr
            new[k] = fast[k] - rate * g
        fast = new
    return fast


def ref_meta_grad(
    model: nn.Module,
    kind: str,
    algo: str,
    params: Mapping[str, torch.Tensor],
    batch: TaskBatch,
    steps: int,
    lr: float,
    first_order: bool = False,
) -> tuple[torch.Tensor, Params]:
    """Mean query loss and mean meta-gradient, looping over the tasks of ``batch`` in Python.

    Reptile's "gradient" is the mean of ``params - adapted`` (SGD-adapted, no graph)."""
    n = batch.n_tasks
    total = torch.zeros((), dtype=batch.xs.dtype)
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    fo = first_order or algo in ("fomaml", "reptile")
    for i in range(n):
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        fast = ref_adapt(model, kind, leaf, batch.xs[i], batch.ys[i], steps, lr, algo, fo)
        qloss = ref_loss(kind, functional_call(model, fast, (batch.xq[i],)), batch.yq[i])
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


def ref_hash_uniform(seed: int, step: int, idx: int) -> float:
    """Pure-Python twin of the population trainer's counter-based minibatch hash."""
    h = (seed % _P * 1000003 + step % _P) % _P
    h = (h * 48271 + idx * 69621 + 12345) % _P
    for _ in range(3):
        h = (h ^ (h >> 13)) % _P
        h = (h * 48271 + 11) % _P
    return (h + 0.5) / _P


def ref_minibatch(seed: int, step: int, n: int, batch_size: int) -> list[int]:
    """Indices of the ``batch_size`` examples with the smallest hash scores at ``step``."""
    order = sorted(range(n), key=lambda i: ref_hash_uniform(seed, step, i))
    return sorted(order[: min(batch_size, n)])


def ref_train_member(
    model: nn.Module,
    kind: str,
    params: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    n_steps: int,
) -> Params:
    """Fine-tune ONE member with ``torch.optim`` (SGD or Adam, coupled weight decay), only the
    head when ``adapt == "head"``, on hash-chosen minibatches, for ``min(n_steps, steps)``."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    names = list(p)
    train_keys = _head(names) if config.get("adapt", "all") == "head" else names
    opt_cls = torch.optim.Adam if config.get("optimizer", "sgd") == "adam" else torch.optim.SGD
    opt = opt_cls(
        [p[k] for k in train_keys],
        lr=float(config.get("lr", 0.01)),
        weight_decay=float(config.get("weight_decay", 0.0)),
    )
    n = int(x.shape[0])
    bs = min(int(config.get("batch_size", n)), n)
    for t in range(min(n_steps, int(config.get("steps", n_steps)))):
        idx = torch.tensor(ref_minibatch(seed, t, n, bs), dtype=torch.long)
        loss = ref_loss(kind, functional_call(model, p, (x[idx],)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in p.items()}
