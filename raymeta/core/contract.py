"""The model contract kit: ``check_model`` runs a model factory through every rule raymeta's
engine relies on and names the first one it breaks; ``check_model_runs`` is its cheap part,
run on the driver before Ray starts.

Why a kit: raymeta never calls a model the way a training script does. It rebuilds it from
``meta.json`` in every Ray worker (so options must be plain data and initialisation
deterministic), runs a whole meta-batch of tasks through one ``torch.func.vmap`` of
``functional_call`` + ``grad`` (so forward may not mutate buffers, BatchNorm may not keep
running statistics), and adapts only the ``head.`` parameters for ANIL and head-only fine-tuning.
A model that breaks one of these fails deep inside a Ray worker, or worse trains silently wrong;
checked once in the user's test suite it is one line that says what to change.

Rules, in the order they are checked (``ContractError.rule`` holds the name):

``options``           options are JSON-able plain data (they are stored in meta.json)
``builds``            ``factory(input_shape, output_dim, **options)`` returns without raising
``module``            it returns a ``torch.nn.Module``
``parameters``        it has parameters and every one is floating point
``head``              the final layer is ``self.head`` (parameters ``head.*``, what ANIL and
                      head-only fine-tuning adapt) and at least one parameter lies outside it
``no-running-stats``  no normalisation layer keeps running statistics
                      (``track_running_stats=True``): use GroupNorm or
                      ``track_running_stats=False``
``forward``           a batch ``(B, *input_shape)`` gives one finite float tensor ``(B, output_dim)``
``no-mutated-buffers`` forward leaves every buffer as it was
``deterministic``     two builds under the same ``torch.manual_seed`` have identical parameters
``options-round-trip`` options read back from JSON (tuples become lists) build the same
                      parameter names and shapes
``vmap``              MAML and ANIL meta-gradients of raymeta's engine (vmap + grad over a batch of
                      tasks, second order) run and match a per-task Python loop to 1e-5 of
                      their scale (in float64). BatchNorm, LayerNorm and InstanceNorm fail it
                      even without running statistics: vmap gets their second-order gradient
                      wrong (pytorch/functorch#534); GroupNorm passes

A model is named by ``head.`` alone: the prefix is what survives ``state_dict``s, checkpoints and
``functional_call``'s flat parameter dicts, so no other registry of "which layer is the head" can
drift out of sync with the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from raymeta.core.engine import InnerConfig, MetaEngine
from raymeta.core.models import HEAD_PREFIX, ModelSpec, build_model, head_keys
from raymeta.core.reference import ref_meta_grad
from raymeta.errors import ContractError
from raymeta.tasks.base import TaskBatch
from raymeta.tasks.contract import fail, first_line, json_problem, json_round_trip

ModelFactory = Callable[..., nn.Module]
# norms built on aten's batch_norm / layer_norm, whose second-order gradient vmap gets wrong
VMAP_WRONG_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
)
FORWARD_BATCH = 3
TASKS, SUPPORT, QUERY = 3, 4, 4
INNER_LR = 0.01  # the engine's default inner learning rate
TOL = 1e-5  # of each tensor's scale, max(1, max |loop value|), compared in float64
TOL_FLOAT32 = 1e-3  # for a model that cannot run in float64
VMAP_HINT = (
    "raymeta runs every task of a meta-batch through one torch.func.vmap(functional_call): "
    "avoid in-place updates of buffers or inputs, .item() / data-dependent Python branches, "
    "random ops (dropout) and BatchNorm running statistics"
)


def _label(factory: Any) -> str:
    if isinstance(factory, str):
        return f"model {factory!r}"
    if isinstance(factory, nn.Module):
        return f"model {type(factory).__qualname__}"
    return f"model {getattr(factory, '__qualname__', None) or type(factory).__name__}"


def _build(
    factory: ModelFactory | str,
    input_shape: tuple[int, ...],
    output_dim: int,
    options: dict[str, Any],
) -> Any:
    """Build the way raymeta does: a name or import path through ``build_model``, a callable
    directly (so a raising factory's own exception type reaches the message)."""
    if isinstance(factory, str):
        return build_model(ModelSpec(factory, input_shape, output_dim, options))
    return factory(input_shape, output_dim, **options)


def _check_io(input_shape: Sequence[int], output_dim: int) -> tuple[tuple[int, ...], int]:
    """The caller's own arguments (a mistake here is not the model's fault)."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ContractError(
            f"check_model: input_shape must be a tuple of integers >= 1, got {input_shape!r}",
            "arguments",
        )
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise ContractError(
            f"check_model: output_dim must be an integer >= 1, got {output_dim!r}", "arguments"
        )
    return shape, output_dim


def _first_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _dtype(model: nn.Module) -> torch.dtype:
    """The model's floating dtype (inputs must match it: meta-training may run in float64)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- rules


def _rule_parameters(model: nn.Module, who: str) -> None:
    named = list(model.named_parameters())
    if not named:
        raise fail(who, "parameters", "it has no parameters", "give it trainable layers")
    for n, p in named:
        if not p.is_floating_point():
            raise fail(
                who,
                "parameters",
                f"parameter {n!r} is {p.dtype}",
                "make every parameter floating point (meta-gradients flow through all of them)",
            )


def _rule_head(model: nn.Module, who: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    heads = head_keys(names)
    if not heads:
        raise fail(
            who,
            "head",
            f"no parameter is named {HEAD_PREFIX!r}* (it has {', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''})",
            "name the final layer self.head (e.g. self.head = nn.Linear(features, output_dim)): "
            "ANIL and head-only fine-tuning adapt the head.* parameters",
        )
    if len(heads) == len(names):
        raise fail(
            who,
            "head",
            f"every parameter is under {HEAD_PREFIX!r}, there is no body",
            "keep only the final layer in self.head and the feature layers outside it",
        )


def _rule_running_stats(model: nn.Module, who: str) -> None:
    for name, m in model.named_modules():
        if getattr(m, "track_running_stats", False) is True:
            raise fail(
                who,
                "no-running-stats",
                f"{type(m).__name__} {name or '(root)'!r} keeps running statistics "
                "(track_running_stats=True), which every forward updates in place and vmap "
                "cannot batch over tasks",
                "use nn.GroupNorm, or pass track_running_stats=False",
            )


def _buffers(model: nn.Module) -> dict[str, tuple[torch.Tensor, int, torch.Tensor]]:
    return {n: (b, b._version, b.detach().clone()) for n, b in model.named_buffers()}


def _rule_forward(
    model: nn.Module,
    who: str,
    input_shape: tuple[int, ...],
    output_dim: int,
    batch: int = FORWARD_BATCH,
) -> None:
    """Forward on a random batch: one finite float ``(B, output_dim)`` tensor, buffers untouched."""
    device = _first_device(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=g).to(device=device, dtype=_dtype(model))
    before = _buffers(model)
    fix = f"return one float tensor of shape (batch, output_dim) = ({batch}, {output_dim})"
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise fail(
            who,
            "forward",
            f"forward on a batch of shape {tuple(x.shape)} raised {first_line(exc)}",
            "make forward accept (batch, *input_shape) inputs",
        ) from None
    if not isinstance(out, torch.Tensor):
        raise fail(who, "forward", f"forward returned a {type(out).__name__}", fix)
    if tuple(out.shape) != (batch, output_dim):
        raise fail(
            who,
            "forward",
            f"forward on {tuple(x.shape)} returned shape {tuple(out.shape)}, expected "
            f"{(batch, output_dim)}",
            fix,
        )
    if not out.is_floating_point():
        raise fail(who, "forward", f"forward returned {out.dtype}", fix)
    if not bool(torch.isfinite(out).all()):
        raise fail(
            who,
            "forward",
            "forward returned NaN or infinity on a standard normal batch",
            "check the initialisation and any division or log in forward",
        )
    after = dict(model.named_buffers())
    for n, (b, version, value) in before.items():
        now = after.get(n)
        if (
            now is not b
            or b._version != version
            or b.shape != value.shape
            or not torch.equal(b, value)
        ):
            raise fail(
                who,
                "no-mutated-buffers",
                f"forward changes buffer {n!r}, which vmap cannot batch over tasks",
                "compute it from the inputs in forward, or keep the buffer constant",
            )


def _rule_deterministic(
    factory: ModelFactory | str,
    who: str,
    input_shape: tuple[int, ...],
    output_dim: int,
    options: dict[str, Any],
    first: nn.Module,
) -> None:
    torch.manual_seed(0)
    second = _build(factory, input_shape, output_dim, options)
    a, b = first.state_dict(), second.state_dict()
    fix = (
        "draw initial weights only from torch's global RNG (no numpy, random or time), so "
        "every Ray worker builds the same initialisation"
    )
    if list(a) != list(b):
        raise fail(
            who, "deterministic", "two builds have different parameter names", fix
        )  # fmt: skip
    for n in a:
        if a[n].shape != b[n].shape or not torch.equal(a[n], b[n]):
            raise fail(
                who,
                "deterministic",
                f"two builds under torch.manual_seed(0) differ in {n!r}",
                fix,
            )


def _rule_round_trip(
    factory: ModelFactory | str,
    who: str,
    input_shape: tuple[int, ...],
    output_dim: int,
    options: dict[str, Any],
    model: nn.Module,
) -> None:
    back = json_round_trip(options)
    if back == options:  # tuples compare unequal to the lists JSON gives back
        return
    fix = "accept lists wherever you accept tuples: options come back from meta.json as JSON"
    try:
        again = _build(factory, input_shape, output_dim, back)
    except Exception as exc:
        raise fail(
            who,
            "options-round-trip",
            f"building with options read back from JSON raised {first_line(exc)}",
            fix,
        ) from None
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    got = {n: tuple(p.shape) for n, p in again.named_parameters()}
    if want != got:
        raise fail(
            who,
            "options-round-trip",
            "options read back from JSON build other parameters",
            fix,
        )


def _batch(
    input_shape: tuple[int, ...],
    output_dim: int,
    device: torch.device,
    tasks: int,
    k: int,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """Random regression episodes (MSE works for every output_dim) of ``tasks`` tasks."""
    g = torch.Generator().manual_seed(1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return TaskBatch(
        draw(tasks, k, *input_shape),
        draw(tasks, k, output_dim),
        draw(tasks, k, *input_shape),
        draw(tasks, k, output_dim),
    )


def _meta_grad(
    model: nn.Module, who: str, algo: str, batch: TaskBatch
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # the vmap path explicitly: it is the one every device can run (CUDA always does), while the
    # CPU's folded path for Conv4-shaped nets would hide a model that breaks under vmap
    engine = MetaEngine(
        model, "regression", algo, InnerConfig(steps=1, lr=INNER_LR), conv_path="vmap"
    )
    try:
        loss, grads = engine.meta_grad(engine.init_params(), batch)
    except Exception as exc:
        raise fail(
            who,
            "vmap",
            f"{algo} meta-gradient under torch.func.vmap + grad raised {first_line(exc)}",
            VMAP_HINT,
        ) from None
    if not bool(torch.isfinite(loss)) or not all(
        bool(torch.isfinite(g).all()) for g in grads.values()
    ):
        raise fail(
            who, "vmap", f"{algo} meta-gradient is not finite", "check forward for NaN sources"
        )
    return loss, grads


def _mismatch_fix(model: nn.Module) -> str:
    """What to change when vmap runs but computes another meta-gradient than the loop."""
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, VMAP_WRONG_NORMS)})
    if norms:
        # measured with torch 2.13 in float64, where the loop agrees with finite differences:
        # conv4 with norm="batch" (no running stats) is off by 1e-3 to 1e-2 of the gradient,
        # a LayerNorm MLP by 5e-4, InstanceNorm2d by 2e-3 (pytorch/functorch#534: the batching
        # rule of the norms' backward is wrong for grad_input); GroupNorm is exact
        return (
            f"{' and '.join(norms)} get a wrong second-order gradient under torch.func.vmap "
            "(pytorch/functorch#534), so MAML would train silently wrong: use nn.GroupNorm "
            "(GroupNorm(1, C) normalises like LayerNorm(C))"
        )
    return (
        "treat dim 0 as the examples of one task: no state kept between calls, nothing shared "
        "across the batch but the parameters"
    )


def _float64_copy(model: nn.Module, batch: TaskBatch) -> tuple[nn.Module, TaskBatch] | None:
    """The model and batch in float64, or None for a model that cannot run in it."""
    try:
        m64 = copy.deepcopy(model).to(torch.float64)
        b64 = batch.to(dtype=torch.float64)
        with torch.no_grad():
            m64(b64.xs[0])
    except Exception:
        return None
    return m64, b64


def _rule_vmap(model: nn.Module, who: str, input_shape: tuple[int, ...], output_dim: int) -> None:
    """The engine's vmapped MAML and ANIL meta-gradients run in the model's own dtype and equal
    a per-task Python loop. The comparison runs in float64 where the model allows it: float32
    second-order sums differ by up to ~1e-3 of their scale on ill-conditioned nets (GroupNorm
    over 2 values) although vmap is exact, so only float64 tells a wrong gradient from rounding."""
    batch = _batch(input_shape, output_dim, _first_device(model), TASKS, SUPPORT, _dtype(model))
    for algo in ("maml", "anil"):
        _meta_grad(model, who, algo, batch)
    wide = _float64_copy(model, batch)
    m, b, tol = (*wide, TOL) if wide else (model, batch, TOL_FLOAT32)
    for algo in ("maml", "anil"):
        loss, grads = _meta_grad(m, who, algo, b)
        try:
            ref_loss, ref_grads = ref_meta_grad(m, "regression", algo, _params(m), b, 1, INNER_LR)
        except Exception as exc:
            raise fail(
                who,
                "vmap",
                f"the per-task reference loop ({algo}) raised {first_line(exc)}",
                "make forward differentiable twice (second-order MAML)",
            ) from None
        pairs = [("query loss", loss, ref_loss)] + [
            (f"gradient of {n!r}", grads[n], ref_grads[n]) for n in ref_grads
        ]
        for what, got, want in pairs:
            scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
            err = float((got - want).abs().max()) if want.numel() else 0.0
            if not err <= tol * scale:
                raise fail(
                    who,
                    "vmap",
                    f"the vmapped {algo} {what} differs from a per-task loop by "
                    f"{err / scale:.2g} of its scale",
                    _mismatch_fix(model),
                )


# ----------------------------------------------------------------------------- public API


def check_model(
    factory: ModelFactory | str,
    input_shape: Sequence[int],
    output_dim: int,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Check a model factory against raymeta's contract; raise ``ContractError`` (a
    ``ConfigError``) on the first broken rule (see the module docstring), with a one-line
    message that says how to fix it.

    ``factory`` is ``factory(input_shape, output_dim, **options) -> nn.Module`` (a class such
    as ``raymeta.core.models.MLP``, or a function), or a registered name / import path
    ``package.module:factory`` (built through ``build_model``, as Ray workers build it). The
    global torch RNG is left as it was found."""
    who = _label(factory)
    shape, output_dim = _check_io(input_shape, output_dim)
    if isinstance(factory, nn.Module):
        raise ContractError(
            f"check_model: pass the model's class or factory, not a built {who} (raymeta "
            "rebuilds it in every worker; check_model_runs checks a built model)",
            "arguments",
        )
    opts = dict(options or {})
    problem = json_problem(opts, "options")
    if problem:
        raise fail(
            who,
            "options",
            problem,
            "pass plain data (numbers, strings, lists, dicts) and build objects inside the "
            "factory: options are stored in meta.json for Ray workers to rebuild the model",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = _build(factory, shape, output_dim, opts)
        except Exception as exc:
            raise fail(
                who,
                "builds",
                f"building it for input_shape={shape}, output_dim={output_dim} raised "
                f"{first_line(exc)}",
                "fix the factory or its options",
            ) from None
        if not isinstance(model, nn.Module):
            raise fail(
                who,
                "module",
                f"the factory returned a {type(model).__name__}",
                "return a torch.nn.Module",
            )
        _rule_parameters(model, who)
        _rule_head(model, who)
        _rule_running_stats(model, who)
        _rule_forward(model, who, shape, output_dim)
        _rule_deterministic(factory, who, shape, output_dim, opts, model)
        _rule_round_trip(factory, who, shape, output_dim, opts, model)
        _rule_vmap(model, who, shape, output_dim)


def check_model_runs(model: nn.Module, input_shape: Sequence[int], output_dim: int) -> None:
    """The cheap pre-flight of ``check_model`` on an already built model, for the driver to run
    before Ray starts: no running statistics, a forward on a batch of 2 gives a finite float
    ``(2, output_dim)``, and one vmapped second-order MAML meta-gradient over 2 tasks runs.

    Raises ``ContractError`` (a ``ConfigError``: one line). The model's weights and buffers are
    left untouched (the engine works on detached copies) and so is the global RNG."""
    who = _label(model)
    shape, output_dim = _check_io(input_shape, output_dim)
    if not isinstance(model, nn.Module):
        raise fail(who, "module", f"got a {type(model).__name__}", "pass a torch.nn.Module")
    with torch.random.fork_rng(devices=[]):
        _rule_parameters(model, who)
        _rule_running_stats(model, who)
        _rule_forward(model, who, shape, output_dim, batch=2)
        dev, dt = _first_device(model), _dtype(model)
        _meta_grad(model, who, "maml", _batch(shape, output_dim, dev, 2, 2, dt))


def check_second_order(model: nn.Module, input_shape: Sequence[int], output_dim: int) -> None:
    """The engine's vmapped MAML / ANIL meta-gradients of ``model`` equal a per-task loop (in
    float64 where the model allows it). Meta-training runs it on the driver for second-order
    algorithms: BatchNorm, LayerNorm and InstanceNorm get a wrong second-order gradient under
    ``torch.func.vmap`` in this torch (pytorch/functorch#534), which would train silently
    wrong; raises ``ContractError`` naming the fix."""
    who = _label(model)
    shape, output_dim = _check_io(input_shape, output_dim)
    with torch.random.fork_rng(devices=[]):
        _rule_vmap(model, who, shape, output_dim)
