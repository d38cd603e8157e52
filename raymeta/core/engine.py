"""The vectorised meta-learning engine.

Inner-loop adaptation is a pure function of ``(params, support, hparams)`` written with
``torch.func``; ``vmap`` pushes a whole chunk of tasks through one computation and
``grad_and_value`` differentiates the chunk's summed query loss with respect to the
meta-parameters. The only Python loop is over *chunks* (to bound memory), never over tasks.

Meta-parameters are a flat ``dict[str, Tensor]``: the model's parameters, plus for Meta-SGD one
learning-rate tensor per parameter under ``lr.<name>``, plus with MAML++'s learned per-step
rates (LSLR) one ``[inner_steps]`` tensor per adapted parameter under ``lslr.<name>``. The
rates travel with the parameters: whenever ``lslr.<name>`` is present, inner step ``i`` uses its
entry ``i``, so an engine evaluating a loaded checkpoint's parameters runs its learned inner loop
without being told. Steps past the learned ones (an evaluation with more steps than training
had) use the fixed inner lr: repeating the last learned rate, often the largest (the loop learns
to finish with a big step), made 10-step sinusoid evaluation of a 5-step LSLR model diverge.

The MAML++ options that change one outer step (multi-step loss weights, a first-order step of a
second-order algorithm) are arguments of ``meta_grad``; their schedules over outer steps live
in ``core.train``, which keeps this module stateless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from raymeta.core.conv_batched import (
    foldable,
    folded_episode_scores,
    folded_meta_grad,
    has_conv,
)
from raymeta.core.losses import accuracy, loss_fn
from raymeta.core.models import builtin_activations, head_keys
from raymeta.errors import ConfigError
from raymeta.tasks.base import TaskBatch

Params = dict[str, torch.Tensor]
ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "anil", "pretrain")
LR_PREFIX = "lr."
LSLR_PREFIX = "lslr."
LSLR_ALGOS = ("maml", "fomaml", "anil")
MSL_ALGOS = ("maml", "fomaml", "metasgd", "anil")
Reduction = Literal["mean", "sum"]
ConvPath = Literal["auto", "vmap", "folded"]
CONV_PATHS = ("auto", "vmap", "folded")
FOLDABLE_ALGOS = ("maml", "fomaml", "metasgd", "anil")
# The activations one chunk of tasks may hold on the CPU when no chunk size is given (folded
# meta-gradients and evaluations of the built-in models). Why: on one or two cores the folded
# path runs no faster with 32 tasks per chunk than with 2-8 (it is not parallel there; issue 17
# sixth pass, BENCHMARKS.md), while its memory grows with every task: Conv4 at 28x28 with 80
# rows per task holds ~70 MB of activations per task, so a meta-batch of 32 peaked at 2.4 GB
# and a 100-task meta-validation at 3.5 GB. Chunks of this size keep the peak near a looped
# reference's and each buffer small enough for the allocator to reuse. On a GPU all tasks stay
# in one chunk.
CPU_CHUNK_BYTES = 256 << 20


def check_algorithm(algo: str) -> str:
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGORITHMS)})")
    return algo


@dataclass(frozen=True)
class InnerConfig:
    """Inner-loop hyperparameters; ``first_order`` drops second-order terms (FOMAML).

    ``checkpoint`` recomputes each inner step during the backward pass instead of keeping its
    activations (``torch.utils.checkpoint``): second-order MAML's memory then stays at about
    one step's graph however many steps there are, for roughly one extra forward per step."""

    steps: int = 1
    lr: float = 0.01
    first_order: bool = False
    checkpoint: bool = False
    learn_lr: bool = False  # MAML++ LSLR: ``init_params`` adds ``lslr.<name>`` rates per step


class MetaEngine:
    """Binds a model skeleton, a loss kind and an algorithm; holds no trainable state."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        algo: str = "maml",
        inner: InnerConfig | None = None,
        chunk_size: int | None = None,
        conv_path: ConvPath = "auto",
    ):
        """``conv_path`` picks how a convolutional model's tasks are batched: ``vmap`` (fast on
        GPU), ``folded`` (tasks folded into a grouped convolution, ``core.conv_batched``:
        faster on CPU, where vmap's conv batching rule is slow) or ``auto`` (folded on CPU for
        models it can fold, vmap elsewhere)."""
        self.model = model
        self.kind = kind
        self.algo = check_algorithm(algo)
        inner = inner or InnerConfig()
        if inner.steps < 0:
            raise ConfigError(f"inner steps must be >= 0, got {inner.steps}")
        if algo == "fomaml":
            inner = replace(inner, first_order=True)
        if inner.learn_lr and algo not in LSLR_ALGOS:
            raise ConfigError(
                f"learned per-step inner learning rates work with {', '.join(LSLR_ALGOS)}, "
                f"not {algo}"
            )
        if inner.learn_lr and inner.steps < 1:
            raise ConfigError("learned per-step inner learning rates need inner steps >= 1")
        if conv_path not in CONV_PATHS:
            raise ConfigError(
                f"unknown conv path {conv_path!r} (choose from {', '.join(CONV_PATHS)})"
            )
        self.inner = inner
        self.chunk_size = chunk_size
        self.builtin = foldable(model)  # a models.Conv4 / MLP shape: sized by layer walk
        self.foldable = algo in FOLDABLE_ALGOS and self.builtin
        self.has_conv = has_conv(model)
        folds = conv_path == "folded" or (inner.checkpoint and algo in FOLDABLE_ALGOS)
        if folds and not self.foldable:
            raise ConfigError(
                f"{'checkpoint_inner' if inner.checkpoint else 'conv path folded'} needs a conv4 "
                f"or mlp model and one of {', '.join(FOLDABLE_ALGOS)}"
            )
        if inner.checkpoint and conv_path == "vmap" and algo in FOLDABLE_ALGOS:
            raise ConfigError(
                "checkpoint_inner cannot run on the vmap path (torch.func refuses it)"
            )
        self.conv_path = conv_path
        self.loss = loss_fn(kind)
        self.names = [n for n, _ in model.named_parameters()]
        self.adapt_keys = head_keys(self.names) if algo == "anil" else list(self.names)

    # ----------------------------------------------------------------- parameters
    def init_params(self) -> Params:
        """Meta-parameters from the model's current weights (plus Meta-SGD learning rates, or
        LSLR's ``[steps]`` rates per adapted parameter, all starting at the inner lr)."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        if self.algo == "metasgd":
            for n in self.names:
                params[LR_PREFIX + n] = torch.full_like(params[n], self.inner.lr)
        if self.inner.learn_lr:
            for n in self.adapt_keys:
                params[LSLR_PREFIX + n] = params[n].new_full((self.inner.steps,), self.inner.lr)
        return params

    def model_params(self, params: Mapping[str, torch.Tensor]) -> Params:
        return {n: params[n] for n in self.names}

    def forward(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.model_params(params), (x,))

    # ----------------------------------------------------------------- inner loop
    def adapt(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int | None = None,
        first_order: bool | None = None,
    ) -> Params:
        """Fine-tune on one task's support set; returns new tensors, inputs stay untouched."""
        steps = self.inner.steps if steps is None else steps
        fo = self.inner.first_order if first_order is None else first_order
        fast = self.model_params(params)
        # (a checkpointed inner loop runs on the folded path: torch.func refuses checkpoint)
        for i in range(steps):
            fast = self._inner_step(params, fast, x, y, i, fo)
        return fast

    def _inner_step(
        self,
        params: Mapping[str, torch.Tensor],
        fast: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        i: int,
        fo: bool,
    ) -> Params:
        """Inner step ``i`` (0-based) from ``fast``; the rate is Meta-SGD's ``lr.<name>``,
        LSLR's ``lslr.<name>[i]`` when present, or the fixed inner lr."""
        if len(self.adapt_keys) != len(self.names):
            base = fast

            def inner_loss(sub: Params, base: Params = base) -> torch.Tensor:
                return self.loss(functional_call(self.model, {**base, **sub}, (x,)), y)

            g = grad(inner_loss)({k: fast[k] for k in self.adapt_keys})
        else:
            # every parameter adapts: differentiate the dict itself (no merge per step)
            g = grad(lambda q: self.loss(functional_call(self.model, q, (x,)), y))(fast)
        if fo:
            g = {k: v.detach() for k, v in g.items()}
        new = dict(fast)
        for k in self.adapt_keys:
            new[k] = fast[k] - step_rate(params, k, i, self.algo, self.inner.lr) * g[k]
        return new

    def _task_query(
        self,
        params: Params,
        xs: torch.Tensor,
        ys: torch.Tensor,
        xq: torch.Tensor,
        yq: torch.Tensor,
        fo: bool,
        weights: tuple[float, ...] | None,
    ) -> torch.Tensor:
        """One task's query loss after the inner loop, or with MSL ``weights`` the weighted sum
        of its query losses after every inner step (zero weights are skipped)."""
        # episodic pretraining (families without global classes; with them, core.pretrain
        # trains a C-way classifier instead): the shared weights on all of a task's rows
        if self.algo == "pretrain":
            x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
            return self.loss(functional_call(self.model, self.model_params(params), (x,)), y)
        if weights is None:
            fast = self.adapt(params, xs, ys, first_order=fo)
            return self.loss(functional_call(self.model, fast, (xq,)), yq)
        fast = self.model_params(params)
        total = xq.new_zeros((), dtype=xs.dtype)
        for i, w in enumerate(weights):
            fast = self._inner_step(params, fast, xs, ys, i, fo)
            if w != 0.0:
                total = total + w * self.loss(functional_call(self.model, fast, (xq,)), yq)
        return total

    def _chunks(self, n: int, default: int | None = None) -> list[tuple[int, int]]:
        size = self.chunk_size or default or n
        return [(s, min(s + size, n)) for s in range(0, n, max(size, 1))]

    def cpu_chunk_size(self, batch: TaskBatch) -> int:
        """Tasks per chunk of a folded meta-gradient or an evaluation: the user's
        ``chunk_size``; else, for a built-in model on the CPU, as many tasks as keep a chunk's
        activations within ``CPU_CHUNK_BYTES`` (rows of the query pass and of each inner step,
        times the model's activation values per row); else all."""
        n = batch.n_tasks
        if self.chunk_size or batch.xs.device.type != "cpu" or n == 0 or not self.builtin:
            return self.chunk_size or max(n, 1)
        rows = batch.xq.shape[1] + batch.xs.shape[1] * max(1, self.inner.steps)
        per_task = rows * builtin_activations(self.model, batch.xs.shape[2:])
        per_task *= batch.xs.element_size()
        return max(1, min(n, CPU_CHUNK_BYTES // max(per_task, 1)))

    # ----------------------------------------------------------------- outer loop
    def meta_grad(
        self,
        params: Params,
        batch: TaskBatch,
        reduction: Reduction = "mean",
        first_order: bool = False,
        step_weights: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """Query loss and meta-gradient over ``batch`` (mean over tasks, or sum for sharding).

        ``first_order=True`` makes this one step first-order (MAML++'s derivative-order
        annealing: a second-order algorithm's early steps); it never makes FOMAML second-order.
        ``step_weights`` (MAML++'s multi-step loss, one weight per inner step) replaces each
        task's final query loss by the weighted sum of its query losses after every inner step;
        the returned loss is that weighted sum (what is differentiated)."""
        n = batch.n_tasks
        fo = self.inner.first_order or bool(first_order)
        weights = self._check_weights(step_weights)
        if n == 0:
            return batch.xq.new_zeros((), dtype=batch.xs.dtype), {
                k: torch.zeros_like(v) for k, v in params.items()
            }
        if self.algo == "reptile":
            loss_sum, grads = self._reptile_grad(params, batch)
        elif self.uses_folded(batch.xs.device):
            loss_sum, grads = self._folded_grad(params, batch, fo, weights)
        else:

            def one_task(
                p: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor
            ) -> torch.Tensor:
                return self._task_query(p, xs, ys, xq, yq, fo, weights)

            task_loss = vmap(one_task, in_dims=(None, 0, 0, 0, 0))

            def chunk_loss(p: Params, b: TaskBatch) -> torch.Tensor:
                return task_loss(p, b.xs, b.ys, b.xq, b.yq).sum()

            chunks = self._chunks(n)
            if len(chunks) == 1:  # the common case: no accumulation buffers
                grads, loss_sum = grad_and_value(chunk_loss)(params, batch)
                loss_sum = loss_sum.detach()
            else:
                loss_sum = batch.xq.new_zeros((), dtype=batch.xs.dtype)
                grads = {k: torch.zeros_like(v) for k, v in params.items()}
                for s, e in chunks:
                    g, lv = grad_and_value(chunk_loss)(params, batch.slice(s, e))
                    loss_sum = loss_sum + lv.detach()
                    for k in grads:
                        grads[k] += g[k]
        if reduction == "mean":
            return loss_sum / n, {k: v / n for k, v in grads.items()}
        return loss_sum, grads

    def _check_weights(self, step_weights: Sequence[float] | None) -> tuple[float, ...] | None:
        """MSL weights as a tuple of floats: one per inner step, finite, >= 0, for an
        algorithm with an inner loop whose query loss is differentiated."""
        if step_weights is None:
            return None
        if self.algo not in MSL_ALGOS:
            raise ConfigError(
                f"a multi-step loss works with {', '.join(MSL_ALGOS)}, not {self.algo}"
            )
        w = tuple(float(v) for v in step_weights)
        if len(w) != self.inner.steps or not all(math.isfinite(v) and v >= 0 for v in w):
            raise ConfigError(
                f"multi-step loss weights must be {self.inner.steps} finite numbers >= 0 "
                f"(one per inner step), got {list(w)[:8]}"
            )
        return w

    def uses_folded(self, device: torch.device) -> bool:
        """Whether meta-gradients on ``device`` take the folded grouped-convolution path."""
        if self.conv_path == "auto":  # checkpointing needs plain autograd: folded
            return self.foldable and (
                self.inner.checkpoint or (self.has_conv and device.type == "cpu")
            )
        return self.conv_path == "folded"

    def evaluates_folded(self, device: torch.device) -> bool:
        """Whether evaluations on ``device`` fold a built-in conv net's tasks into one net
        (``conv_batched.folded_episode_scores``): where meta-gradients would (``conv_path``
        folded, or auto on the CPU), for every algorithm, since evaluation only adapts."""
        if not (self.builtin and self.has_conv) or self.conv_path == "vmap":
            return False
        return self.conv_path == "folded" or device.type == "cpu"

    def _folded_scores(
        self,
        params: Params,
        xs: torch.Tensor,
        ys: torch.Tensor,
        xq: torch.Tensor,
        yq: torch.Tensor,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return folded_episode_scores(
            self.model,
            self.loss,
            params,
            self.adapt_keys,
            xs,
            ys,
            xq,
            yq,
            self.inner.steps if steps is None else steps,
            self.inner.lr,
            LR_PREFIX if self.algo == "metasgd" else None,
            LSLR_PREFIX,
            self.kind == "classification",
        )

    def _folded_grad(
        self, params: Params, batch: TaskBatch, fo: bool, weights: tuple[float, ...] | None
    ) -> tuple[torch.Tensor, Params]:
        """Summed loss and meta-gradient with the tasks of each chunk folded into channels."""
        loss_sum = batch.xq.new_zeros((), dtype=batch.xs.dtype)
        grads: Params = {}
        for s, e in self._chunks(batch.n_tasks, self.cpu_chunk_size(batch)):
            b = batch.slice(s, e)
            lv, g = folded_meta_grad(
                self.model,
                self.loss,
                params,
                self.adapt_keys,
                b.xs,
                b.ys,
                b.xq,
                b.yq,
                self.inner.steps,
                self.inner.lr,
                fo,
                LR_PREFIX if self.algo == "metasgd" else None,
                self.inner.checkpoint,
                LSLR_PREFIX,
                weights,
            )
            loss_sum = loss_sum + lv
            grads = g if not grads else {k: grads[k] + g[k] for k in grads}
        return loss_sum, grads

    def _reptile_grad(self, params: Params, batch: TaskBatch) -> tuple[torch.Tensor, Params]:
        """Reptile's direction ``params - adapted``; an outer SGD step with lr eps interpolates."""
        adapt = vmap(lambda p, x, y: self.adapt(p, x, y, first_order=True), in_dims=(None, 0, 0))
        query = vmap(lambda f, x, y: self.loss(functional_call(self.model, f, (x,)), y))
        loss_sum = batch.xq.new_zeros((), dtype=batch.xs.dtype)
        grads = {k: torch.zeros_like(v) for k, v in params.items()}
        with torch.no_grad():
            for s, e in self._chunks(batch.n_tasks):
                b = batch.slice(s, e)
                fast = adapt(params, b.xs, b.ys)
                loss_sum = loss_sum + query(fast, b.xq, b.yq).sum()
                for k in self.names:
                    grads[k] += (params[k].unsqueeze(0) - fast[k]).sum(0)
        return loss_sum, grads

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self, params: Params, batch: TaskBatch, steps: int | None = None
    ) -> dict[str, float]:
        """Query loss (and accuracy) after ``steps`` first-order inner steps, averaged over tasks
        (with the learned rates the parameters carry: Meta-SGD's, or LSLR's per step)."""
        losses, accs = self.episode_scores(params, batch, steps)
        out = {"loss": float(losses.mean())}
        if self.kind == "classification":
            out["accuracy"] = float(accs.mean())
        return out

    def episode_scores(
        self, params: Params, batch: TaskBatch, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task query loss and accuracy (zeros for regression) after ``steps`` first-order
        inner steps of this engine's own inner loop: what ``evaluate`` averages, and what a
        benchmark needs per episode for its intervals (``bench.fewshot``'s learned-loop row)."""

        def one(
            p: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            fast = self.adapt(p, xs, ys, steps=steps, first_order=True)
            out = functional_call(self.model, fast, (xq,))
            acc = accuracy(out, yq) if self.kind == "classification" else torch.zeros(())
            return self.loss(out, yq), acc

        run = vmap(one, in_dims=(None, 0, 0, 0, 0))
        if self.evaluates_folded(batch.xs.device):
            run = partial(self._folded_scores, steps=steps)
        losses, accs = [], []
        detached = {k: v.detach() for k, v in params.items()}
        for s, e in self._chunks(batch.n_tasks, self.cpu_chunk_size(batch)):
            b = batch.slice(s, e)
            lo, ac = run(detached, b.xs, b.ys, b.xq, b.yq)
            losses.append(lo.detach())
            accs.append(ac.detach())
        return torch.cat(losses), torch.cat(accs)


def step_rate(
    params: Mapping[str, torch.Tensor], key: str, i: int, algo: str, lr: float
) -> torch.Tensor | float:
    """The rate of inner step ``i`` for parameter ``key``: Meta-SGD's ``lr.<key>``, else LSLR's
    ``lslr.<key>[i]`` when the parameters carry it and it has an entry ``i``, else ``lr``."""
    if algo == "metasgd":
        return params[LR_PREFIX + key]
    rates = params.get(LSLR_PREFIX + key)
    if rates is None or i >= rates.shape[0]:
        return lr
    return rates[i]
