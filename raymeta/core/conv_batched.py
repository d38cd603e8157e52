"""Many tasks' convolutional nets as ONE net: tasks folded into channels (grouped convolution).

``vmap`` over a ``conv2d`` whose weight differs per task is slow on CPU: its batching rule
and the double-backward of a batched convolution fall back to layouts oneDNN runs poorly (the
Conv4 meta-gradient ran at 0.6x a Python loop over tasks). The hand-written trick of
learn2learn/higher users is faster: stack the T tasks' weights along the output channels and
run ``conv2d(..., groups=T)`` on inputs laid out ``(B, T*C, H, W)``; GroupNorm with ``T*G``
groups, BatchNorm (batch statistics), ReLU and max-pooling act per channel, so they are
already per task, and the head is one batched matmul. The forward and the second-order
gradients are plain autograd on ordinary tensors, so they equal the per-task computation
exactly (tests compare in float64 against the looped reference).

Because it is plain autograd (no ``torch.func`` transform), it is also the path on which the
inner loop can be checkpointed (``torch.utils.checkpoint`` refuses to run inside
``torch.func.grad``), so MLPs fold too (linear layers become batched matmuls) when asked to
checkpoint. Only ``models.Conv4`` / ``models.MLP``-shaped nets fold (``foldable``); anything
else stays on the vmapped path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from raymeta.core.losses import accuracy

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def foldable(model: nn.Module) -> bool:
    """True when ``model`` is ``head(body(x))`` with a ``Sequential`` body of conv / norm /
    ReLU / pool layers, a flatten, then linear / ReLU layers, and a linear ``head`` -- what
    ``models.Conv4`` and ``models.MLP`` build and ``folded_forward`` can run stacked."""
    from raymeta.core.models import MLP, Conv4

    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if type(model).forward not in (Conv4.forward, MLP.forward):
        return False
    if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear):
        return False
    flat = False
    for m in body:
        if isinstance(m, nn.Flatten):
            flat = True
        elif isinstance(m, nn.Conv2d) and not flat:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return False
        elif isinstance(m, nn.BatchNorm2d) and not flat:
            if m.track_running_stats:
                return False
        elif isinstance(m, (nn.GroupNorm, nn.MaxPool2d)) and not flat:
            pass
        elif not isinstance(m, (nn.ReLU, nn.Identity)) and not (isinstance(m, nn.Linear) and flat):
            return False
    return flat


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


# Folds of at most this many tasks are channels-last on the CPU (``fold_inputs``).
CHANNELS_LAST_MAX_TASKS = 8


def fold_inputs(x: torch.Tensor) -> torch.Tensor:
    """``(T, B, C, H, W)`` task-major images -> ``(B, T*C, H, W)``, task t in channels t*C..

    On the CPU, a fold of at most ``CHANNELS_LAST_MAX_TASKS`` tasks is channels-last, and so is
    every activation after it (convolution, norm, ReLU and pooling keep the layout). Why: CPU
    max-pooling of a contiguous (NCHW) tensor is not vectorised over channels; on Conv4's
    folded activations it took 8x the time of the same pooling channels-last (75 x 192 x 28 x
    28: 77 ms vs 9.6 ms, one thread), a quarter of the meta-gradient. Measured forward +
    backward of a folded Conv4 (one thread): channels-last 1.10-1.27x faster at 3-8 tasks
    (the engine's CPU chunks), 0.95-1.01x at 16 and 0.8x at 64 (a population's members), where
    oneDNN's grouped convolution of many groups is slower channels-last (BENCHMARKS.md
    "Issue 17, seventh pass"). Values are the same either way, up to float rounding order."""
    t, b, c, h, w = x.shape
    out = x.permute(1, 0, 2, 3, 4).reshape(b, t * c, h, w)
    if out.device.type == "cpu" and t <= CHANNELS_LAST_MAX_TASKS:
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _merged(stacked: Mapping[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """``(T, C)`` per-task vectors as one ``(T*C,)`` vector over the folded channels."""
    v = stacked.get(key)
    return None if v is None else v.reshape(-1)


def folded_forward(
    model: nn.Module, stacked: Mapping[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Outputs ``(T, B, out)`` of T copies of ``model``, copy t with weights ``stacked[k][t]``,
    on folded inputs ``x`` of shape ``(B, T*C, H, W)`` (``fold_inputs``) for a conv net, or
    on ``(T, B, *input_shape)`` for an MLP."""
    return folded_head(stacked, folded_body(model, stacked, x))


def folded_head(stacked: Mapping[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """The head (``head.weight`` / ``head.bias`` of ``stacked``) of T copies on their features
    ``h`` of shape ``(T, B, features)``: one batched matmul."""
    return _linear(h, stacked["head.weight"], stacked.get("head.bias"))


def _linear(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``h @ w^T + bias`` of T copies, ``(T, B, in) -> (T, B, out)``, computed as
    ``(w @ h^T)^T``: the same products, but the gradient of ``w`` comes out contiguous in the
    weights' own ``(T, out, in)`` layout (``h @ w^T`` gives its transpose, which the fused
    optimizer kernels, blind to strides, had copied every step). The result is a transposed
    view (``_swapped``), so the next layer's ``h^T`` is contiguous."""
    out = torch.bmm(w, _swapped(h))
    return _swapped(out if bias is None else out + bias.unsqueeze(2))


def _swapped(x: torch.Tensor) -> torch.Tensor:
    """``x.transpose(1, 2)``, as a reshape where either dimension is 1 (a regression head's
    single output, a 1-D input). Why: the transpose of a ``(T, n, 1)`` tensor has strides
    ``(n, 1, 1)``, which the CPU's batched matmul takes as a transposed operand and, beside a
    transposed other operand, runs ~8x slower (1,024 sinusoid members: the head's weight
    gradient, ``(T, 1, 10) @ (T, 10, 40)``, 1.1 ms vs 0.14 ms); the reshape (a view, here and
    in the backward) has the standard strides. Same values, same products."""
    if x.shape[1] == 1 or x.shape[2] == 1:
        return x.reshape(x.shape[0], x.shape[2], x.shape[1])
    return x.transpose(1, 2)


def folded_body(
    model: nn.Module, stacked: Mapping[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """What the head of each of ``folded_forward``'s T copies receives: ``(T, B, features)``
    (a head-only fine-tune computes it once and then trains the head alone)."""
    t = next(iter(stacked.values())).shape[0]
    h, folded = x, False
    body = model.body
    assert isinstance(body, nn.Sequential)
    for i, m in enumerate(body):
        pre = f"body.{i}."
        if isinstance(m, nn.Conv2d):
            w = stacked[pre + "weight"]
            folded = True
            h = F.conv2d(
                h,
                w.reshape(-1, *w.shape[2:]),
                _merged(stacked, pre + "bias"),
                m.stride,
                m.padding,
                m.dilation,
                t,
            )
        elif isinstance(m, nn.GroupNorm):
            h = F.group_norm(
                h,
                t * m.num_groups,
                _merged(stacked, pre + "weight"),
                _merged(stacked, pre + "bias"),
                m.eps,
            )
        elif isinstance(m, nn.BatchNorm2d):
            h = F.batch_norm(
                h,
                None,
                None,
                _merged(stacked, pre + "weight"),
                _merged(stacked, pre + "bias"),
                True,
                0.0,
                m.eps,
            )
        elif isinstance(m, nn.Flatten):
            if folded:  # (B, T*C, H, W) -> (T, B, features), per-task C,H,W order
                h = h.reshape(h.shape[0], t, -1).transpose(0, 1)
            else:  # raw (T, B, *input_shape): an MLP
                h = h.reshape(t, h.shape[1], -1)
        elif isinstance(m, nn.Linear):
            h = _linear(h, stacked[pre + "weight"], stacked.get(pre + "bias"))
        else:  # ReLU, Identity, MaxPool2d: per channel, hence per task already
            h = m(h)
    return h


def _expanded(model: nn.Module, params: Mapping[str, torch.Tensor], t: int) -> Params:
    """``model``'s weights of ``params`` as T tasks' stacked weights: expanded views
    ``(T, ...)``, so a gradient through them flows back to ``params`` summed over tasks."""
    return {
        n: params[n].unsqueeze(0).expand(t, *params[n].shape) for n, _ in model.named_parameters()
    }


def _inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Task-major inputs as ``folded_forward`` takes them: folded into channels for a conv net."""
    return fold_inputs(x) if has_conv(model) else x


def inner_rate(
    params: Mapping[str, torch.Tensor],
    key: str,
    i: int,
    lr: float,
    lr_prefix: str | None,
    lslr_prefix: str | None,
) -> torch.Tensor | float:
    """The rate of inner step ``i`` for ``key``: Meta-SGD's ``<lr_prefix><key>`` when
    ``lr_prefix`` is given, else LSLR's ``<lslr_prefix><key>[i]`` when ``params`` holds it with
    an entry ``i``, else ``lr`` (``core.engine.step_rate``'s rule, on the folded path)."""
    if lr_prefix:
        return params[lr_prefix + key]
    per_step = params.get(lslr_prefix + key) if lslr_prefix else None
    return lr if per_step is None or i >= per_step.shape[0] else per_step[i]


def folded_meta_grad(
    model: nn.Module,
    loss: LossFn,
    params: Mapping[str, torch.Tensor],
    adapt_keys: list[str],
    xs: torch.Tensor,
    ys: torch.Tensor,
    xq: torch.Tensor,
    yq: torch.Tensor,
    steps: int,
    lr: float,
    first_order: bool,
    lr_prefix: str | None = None,
    checkpointed: bool = False,
    lslr_prefix: str | None = None,
    step_weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, Params]:
    """Summed query loss over the T tasks and its gradient w.r.t. ``params`` (MAML / FOMAML /
    ANIL / Meta-SGD: ``lr_prefix`` names per-parameter rates ``lr.<name>`` in ``params``).

    MAML++: where ``params`` holds ``<lslr_prefix><name>`` (learned per-step rates, shape
    ``[steps]``), step ``i`` uses its entry ``i`` (``lr`` past its length); ``step_weights`` (one per inner step) makes
    each task's loss the weighted sum of its query losses after every step (multi-step loss).

    Every task starts from the same weights expanded to ``(T, ...)``; the gradient of the
    summed support loss w.r.t. the stacked weights is each task's own gradient (tasks do not
    interact), and the meta-gradient flows back through the expand as the sum over tasks."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    fast = _expanded(model, leaves, xs.shape[0])
    sx, qx = _inputs(model, xs), _inputs(model, xq)
    per_task = torch.vmap(loss)

    def step(fast: Params, i: int) -> Params:
        inner = per_task(folded_forward(model, fast, sx), ys).sum()
        g = torch.autograd.grad(inner, [fast[k] for k in adapt_keys], create_graph=not first_order)
        new = dict(fast)
        for k, gk in zip(adapt_keys, g, strict=True):
            new[k] = fast[k] - inner_rate(leaves, k, i, lr, lr_prefix, lslr_prefix) * gk
        return new

    def query(fast: Params) -> torch.Tensor:
        return per_task(folded_forward(model, fast, qx), yq).sum()

    with torch.enable_grad():
        total = xq.new_zeros((), dtype=xs.dtype)
        for i in range(steps):
            if checkpointed and not first_order:
                fast = checkpoint(step, fast, i, use_reentrant=False)
            else:
                fast = step(fast, i)
            if step_weights is not None and step_weights[i] != 0.0:
                total = total + step_weights[i] * query(fast)
        if step_weights is None:
            total = query(fast)
        keys = list(leaves)
        grads = torch.autograd.grad(total, [leaves[k] for k in keys], allow_unused=True)
    out = {
        k: torch.zeros_like(leaves[k]) if gk is None else gk
        for k, gk in zip(keys, grads, strict=True)
    }
    return total.detach(), out


def folded_episode_scores(
    model: nn.Module,
    loss: LossFn,
    params: Mapping[str, torch.Tensor],
    adapt_keys: list[str],
    xs: torch.Tensor,
    ys: torch.Tensor,
    xq: torch.Tensor,
    yq: torch.Tensor,
    steps: int,
    lr: float,
    lr_prefix: str | None = None,
    lslr_prefix: str | None = None,
    classification: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query loss and accuracy (zeros unless ``classification``) of T tasks after
    ``steps`` first-order inner steps from ``params``, the T tasks folded into one net:
    ``MetaEngine.episode_scores`` on the CPU for the built-in conv nets. Why: under ``vmap``
    every evaluated task's convolution and pooling run in the slow batched layouts the
    meta-gradient left behind (``folded_meta_grad``); meta-validation and the few-shot
    benchmarks evaluate hundreds of episodes. Rates as ``inner_rate``; first-order, so each
    step's weights are detached leaves and no graph outlives the step."""
    base = {k: v.detach() for k, v in params.items()}
    fast = _expanded(model, base, xs.shape[0])
    sx = _inputs(model, xs)
    per_task = torch.vmap(loss)
    for i in range(steps):
        with torch.enable_grad():
            leaves = {k: fast[k].detach().requires_grad_(True) for k in adapt_keys}
            inner = per_task(folded_forward(model, {**fast, **leaves}, sx), ys).sum()
            g = torch.autograd.grad(inner, [leaves[k] for k in adapt_keys])
        with torch.no_grad():
            for k, gk in zip(adapt_keys, g, strict=True):
                fast[k] = leaves[k] - inner_rate(base, k, i, lr, lr_prefix, lslr_prefix) * gk
    with torch.no_grad():
        out = folded_forward(model, fast, _inputs(model, xq))
        losses = per_task(out, yq)
        accs = accuracy(out, yq) if classification else torch.zeros_like(losses)
    return losses, accs
