"""Looped, vmap-free reference of the population step (``step.py``), for tests and benchmarks.

One member at a time with ``torch.optim`` (SGD or Adam with coupled weight decay) and plain
autograd, on the minibatches the same counter-based hash selects. It shares no code with the
fast path except the model's functional forward, the loss re-derivation in
``core.reference.ref_loss`` and the hyperparameter vocabulary it reads its defaults from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from raymeta.core.reference import head_names, ref_loss
from raymeta.finetune.hparams import FinetuneConfig

Params = dict[str, torch.Tensor]
_P = 2**31 - 1


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
    head when ``adapt == "head"``, on hash-chosen minibatches, for ``min(n_steps, steps)``.
    Keys ``config`` leaves out take the vocabulary's defaults (``FinetuneConfig``)."""
    cfg = FinetuneConfig.from_dict(config)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    names = list(p)
    train_keys = head_names(names) if cfg["adapt"] == "head" else names
    opt_cls = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.SGD
    opt = opt_cls([p[k] for k in train_keys], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    n = int(x.shape[0])
    bs = n if cfg["batch_size"] is None else min(cfg["batch_size"], n)
    own = n_steps if cfg["steps"] is None else cfg["steps"]
    for t in range(min(n_steps, own)):
        idx = torch.tensor(ref_minibatch(seed, t, n, bs), dtype=torch.long)
        loss = ref_loss(kind, functional_call(model, p, (x[idx],)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in p.items()}
