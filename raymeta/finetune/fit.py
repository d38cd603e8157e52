"""``raymeta priors fit``: fine-tune configs on meta-validation tasks and fit priors to them.

The driver around the pure statistics of ``raymeta.priors.fit``: it draws configs (broad space
first, then from the prior fitted so far), fine-tunes every (task, config) pair through the
fine-tuning runner (``evaluate.evaluate_configs``), re-runs every config with fresh seeds for a
robust final selection, and returns the ``Priors`` artifact. ``PriorFitConfig`` is the typed
request the CLI and the Python API share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from raymeta import checks
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.models import check_model_fits, footprint
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.finetune.evaluate import eval_device, evaluate_configs
from raymeta.finetune.hparams import WEIGHT_DECAY_FLOOR, FinetuneConfig, broad_space
from raymeta.finetune.population import data_dtype
from raymeta.finetune.select import SELECT_POPULATION, SELECT_TASKS, select_strategy
from raymeta.memory import chunk_members, default_budget, member_bytes
from raymeta.priors.artifact import VERSION, Priors
from raymeta.priors.fit import (
    BEST_OF,
    CONDITION_ON,
    MIN_CONFIGS,
    QUANTILE,
    ROUNDS,
    SHRINK_TASKS,
    fit_from_table,
    round_sizes,
)
from raymeta.priors.prior import Prior, broad_prior
from raymeta.priors.refine import REFINE_REPEATS, SAFE_RATE, mean_of_repeats
from raymeta.priors.space import Categorical, SearchSpace
from raymeta.priors.table import OBJECTIVES, EvalTable
from raymeta.tasks import Task, TaskFamily, make_family

MIN_TASKS = 2
MAX_TASKS = 4096  # meta-val tasks of one fit (the default is 32): each is built and kept
MAX_SEED = 2**32 - 1  # numpy and torch seeds, as in sweeps
MAX_FIT_RUNS = 1 << 20  # fine-tuning runs of one fit (the default is 6,144)
MAX_SELECT_POPULATION = 4096  # members of one strategy-selection population


@dataclass(frozen=True)
class PriorFitConfig:
    """What a priors fit does; every field is checked when the config is made.

    ``n_tasks`` meta-val tasks x ``n_configs`` configs in ``rounds`` rounds, each config
    fine-tuned for its own ``steps`` (at most ``max_steps``; with ``objective="anytime"``
    exactly ``max_steps``, the steps per member of the runs the priors serve), ``refine_repeats``
    fresh-seed re-runs for the final selection; the fitting constants are documented in
    ``raymeta.priors.fit``. ``chunk_size`` members train at once on ``device``; ``None`` (the
    default) sizes chunks from ``memory_budget`` bytes (``None``: a share of the memory available
    when the fit starts, ``raymeta.memory.default_budget``), see ``memory_plan``."""

    n_tasks: int = 32
    n_configs: int = 64
    seed: int = 0
    quantile: float = QUANTILE
    portfolio_size: int = 8
    max_steps: int = 100
    chunk_size: int | None = None
    memory_budget: int | None = None  # bytes the fine-tuning chunks may use (None: default)
    rounds: int = ROUNDS
    shrink: float = SHRINK_TASKS
    condition_on: str | None = CONDITION_ON
    best_of: int | None = BEST_OF
    refine_repeats: int = REFINE_REPEATS
    safe_rate: float | None = SAFE_RATE
    objective: str = "final"
    device: str = "cpu"
    select_tasks: int | None = None  # None: half of n_tasks, 2..SELECT_TASKS; 0: no selection
    select_population: int = SELECT_POPULATION
    select_interval: int | None = None  # steps between evaluations (default: tune's, 4 reports)
    # open the first round with the standard fine-tunes (``anchor_configs``); False: all broad
    # draws, as fits were before (what records of older fits need to be reproduced)
    anchors: bool = True

    def __post_init__(self) -> None:
        c = checks
        c.integer("priors: tasks", self.n_tasks, MIN_TASKS, MAX_TASKS)
        c.integer("priors: configs", self.n_configs, MIN_CONFIGS)
        # bounded as sweep seeds are: a seed near 2**63 overflowed a torch seed derived from it
        # (seed * 10_007 + member) minutes into the fit, an internal ValueError
        c.integer("priors: seed", self.seed, 0, MAX_SEED)
        c.number("priors: quantile", self.quantile, 0.0, 1.0, low_open=True)
        c.integer("priors: portfolio size", self.portfolio_size, 1)
        c.integer("priors: max-steps", self.max_steps, 1)
        if self.chunk_size is not None:
            c.integer("priors: chunk-size", self.chunk_size, 1)
        if self.memory_budget is not None:
            c.integer("priors: memory budget", self.memory_budget, 1)
        c.integer("priors: rounds", self.rounds, 1)
        c.number("priors: shrink", self.shrink, 0.0, low_open=True)
        if self.condition_on is not None:
            c.string("priors: condition on", self.condition_on)
        if self.best_of is not None:
            c.integer("priors: best-of", self.best_of, 1)
        c.integer("priors: refine repeats", self.refine_repeats, 0)
        if self.safe_rate is not None:
            c.number("priors: safe rate", self.safe_rate, 0.0, 1.0)
        c.string("priors: objective", self.objective, tuple(OBJECTIVES))
        c.string("priors: device", self.device)
        if self.select_tasks is not None:
            c.integer("priors: select-tasks", self.select_tasks, 0, MAX_TASKS)
        c.integer("priors: select-population", self.select_population, 1, MAX_SELECT_POPULATION)
        c.boolean("priors: anchors", self.anchors)
        if self.select_interval is not None:
            c.integer("priors: select-interval", self.select_interval, 1)
            if self.select_interval > self.max_steps:  # the runs would be clamped to max-steps
                raise ConfigError(
                    f"priors: select-interval {self.select_interval} is more than max-steps "
                    f"{self.max_steps}, the steps every selection run trains (at most "
                    f"{self.max_steps}: one evaluation, at the end)"
                )
        runs = self.fit_runs
        if runs > MAX_FIT_RUNS:
            raise ConfigError(
                f"priors: {self.n_tasks} tasks x {self.n_configs} configs x "
                f"{1 + self.refine_repeats} runs = {runs:,} fine-tuning runs, more than the "
                f"{MAX_FIT_RUNS:,} a fit may take (lower --tasks, --configs or --refine-repeats)"
            )

    @property
    def n_select(self) -> int:
        """Meta-val tasks strategy selection runs on (``select_tasks``, or its default)."""
        if self.select_tasks is not None:
            return self.select_tasks
        return min(SELECT_TASKS, max(2, self.n_tasks // 2))

    @property
    def fit_runs(self) -> int:
        """Fine-tuning runs of the whole fit (every config on every task, and its re-runs)."""
        return (1 + self.refine_repeats) * self.n_configs * self.n_tasks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def val_tasks(family: TaskFamily, n: int, split: str = "val", start: int = 0) -> list[Task]:
    """Fixed tasks ``start .. start + n - 1`` of a meta-split; a family without them is a
    one-line error."""
    out = []
    for i in range(start, start + n):
        try:
            out.append(family.task(split, i))  # type: ignore[arg-type]
        except (RaymetaError, IndexError, KeyError) as exc:
            have = f"only {i}" if i else "no"  # fewer than start + n tasks
            raise DataError(
                f"family {family.name!r} has {have} meta-{split} tasks ({n} requested): {exc}"
            ) from None
    return out


@dataclass(frozen=True)
class MemoryPlan:
    """How many members a fine-tuning chunk holds, and why (recorded in ``priors.json``)."""

    budget: int  # bytes the chunks may use
    budget_source: (
        str  # "--memory-budget", "default" (a share of what was available), "--chunk-size"
    )
    per_member: int  # estimated peak bytes of one member (``raymeta.memory.member_bytes``)
    fixed: int  # bytes taken before any chunk: the stacked task data every chunk gathers from
    chunk_size: int

    def line(self) -> str:
        """The one line ``raymeta priors fit`` prints before fine-tuning."""
        fmt = checks.fmt_bytes
        return (
            f"priors fit: memory budget {fmt(self.budget)} ({self.budget_source}), "
            f"~{fmt(self.per_member)} per member + {fmt(self.fixed)} of task data: chunks of "
            f"{self.chunk_size:,} members (--memory-budget or --chunk-size change it)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_plan(ckpt: MetaCheckpoint, task: Task, cfg: PriorFitConfig) -> MemoryPlan:
    """Size the fine-tuning chunks from a memory budget (``raymeta.memory``).

    A member costs copies of its parameters (the largest candidate's), its own copy of the
    task's train and val tensors, and one forward's activations at the larger of the two split
    sizes; the stacked data of all ``n_tasks`` tasks is paid once. ``cfg.chunk_size`` overrides
    the result; the budget is then the estimate of that chunk, for the record.
    """
    data = (task.x_train, task.y_train, task.x_val, task.y_val)
    data_bytes = sum(t.numel() * t.element_size() for t in data)
    elem = data_dtype(task.x_train).itemsize  # the weights take the data's dtype
    batch = max(int(task.x_train.shape[0]), int(task.x_val.shape[0]))
    per_member = 1
    for cand in ckpt.candidates.values():
        n_params, acts = footprint(cand.spec)
        per_member = max(per_member, member_bytes(n_params, data_bytes, acts * batch, elem))
    fixed = data_bytes * cfg.n_tasks
    if cfg.chunk_size is not None:
        budget = fixed + per_member * min(cfg.chunk_size, cfg.fit_runs)
        return MemoryPlan(budget, "--chunk-size", per_member, fixed, cfg.chunk_size)
    if cfg.memory_budget is not None:
        budget, source = cfg.memory_budget, "--memory-budget"
    else:
        budget, source = default_budget(cfg.device), "default"
    chunk = chunk_members(budget, per_member, fixed, most=cfg.fit_runs)
    return MemoryPlan(budget, source, per_member, fixed, chunk)


def anchor_configs(
    space: SearchSpace, ckpt: MetaCheckpoint, max_steps: int
) -> list[dict[str, Any]]:
    """The standard fine-tuning defaults every model candidate is tried with first: SGD at the
    meta-training inner lr and Adam at 1e-3 / 3e-3 / 1e-2, all layers, full batch, no decay.

    Why: 32 broad draws in 7 dimensions land about one config in the Adam-all-layers-small-lr
    corner, and the next round only refines around what the first found. On the digits Conv4
    that corner is the best full fine-tune, and without anchors the fit settled on head-only
    configs that plateau at twice its loss.
    """
    batch = space["batch_size"]
    full = batch.choices[-1] if isinstance(batch, Categorical) else batch.high  # type: ignore[union-attr]
    out = []
    for name, cand in ckpt.candidates.items():
        inner = float(cand.info.get("inner_lr", 0.01))
        for opt, lr in (("sgd", inner), ("adam", 1e-3), ("adam", 3e-3), ("adam", 1e-2)):
            c = FinetuneConfig(
                lr=space["lr"].clip(lr),  # type: ignore[union-attr]
                optimizer=opt,
                weight_decay=WEIGHT_DECAY_FLOOR,
                steps=max_steps,
                batch_size=full,
                model=name,
            )
            out.append(space.validate(c))
    return out


def _fit_config(ckpt: Any, config: PriorFitConfig | None, fields: dict[str, Any]) -> PriorFitConfig:
    """``fit_priors``'s arguments checked before anything else: a path or a dict passed for
    the checkpoint or the config would otherwise fail as an ``AttributeError`` deep in the fit,
    not as the one-line ``ConfigError`` every other bad argument is."""
    if not isinstance(ckpt, MetaCheckpoint):
        raise ConfigError(
            f"priors: ckpt must be a MetaCheckpoint (raymeta.load_meta_checkpoint(path)), got "
            f"{checks.show_value(ckpt)}"
        )
    if config is not None and not isinstance(config, PriorFitConfig):
        raise ConfigError(
            f"priors: config must be a PriorFitConfig (or pass its fields as keywords), got "
            f"{checks.show_value(config)}"
        )
    try:
        return replace(config, **fields) if config is not None else PriorFitConfig(**fields)
    except TypeError as exc:
        raise ConfigError(f"priors: {exc}") from None


def fit_priors(
    ckpt: MetaCheckpoint,
    config: PriorFitConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    select_progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    **fields: Any,
) -> Priors:
    """Fine-tune ``config.n_configs`` configs on ``config.n_tasks`` meta-val tasks and fit priors
    (``fields`` build the config, or override those of ``config``).

    The configs come in ``rounds`` equal batches (cross-entropy-method style): the first from
    the broad space, each later one from the prior fitted to everything evaluated so far, so the
    fixed budget of fine-tuning runs lands where good configs are and the final fit (over all
    rounds) resolves the good region instead of 64 scattered points in 7 dimensions.

    ``objective="anytime"`` fits priors for population runs (``raymeta tune``, sweeps): every
    config's ``steps`` is ``max_steps`` (set it to the run's steps per member) and configs are
    ranked by their anytime loss (``priors.table``). With ``"final"`` a config is one
    fine-tuning run of its own ``steps``: on digits that picked 4-7-step head-only configs,
    which top out above a full fine-tune once a tune run trains them for its whole budget.
    Either way the first round opens with ``anchor_configs`` (the standard fine-tunes) unless
    ``anchors=False``.
    ``device`` is where the fine-tuning populations train (``"cuda"`` on a GPU machine).
    ``log`` gets the one line that says how the chunks were sized (``MemoryPlan.line``).
    """
    cfg = _fit_config(ckpt, config, fields)
    n_tasks, n_configs, seed, max_steps = cfg.n_tasks, cfg.n_configs, cfg.seed, cfg.max_steps
    objective, device = cfg.objective, cfg.device
    for cand in ckpt.candidates.values():
        check_model_fits(cand.spec)
    eval_device(device)  # fail before any fine-tuning
    t0 = time.perf_counter()
    if progress is not None:  # the line shows from the start (building the tasks takes a while)
        progress(0, cfg.fit_runs)
    family = make_family(ckpt.family)
    first = val_tasks(family, 1)[0]
    per_task = sum(
        t.numel() * t.element_size()
        for t in (
            first.x_train,
            first.y_train,
            first.x_val,
            first.y_val,
            first.x_test,
            first.y_test,
        )
    )
    checks.check_fits(
        f"priors: {n_tasks} meta-val tasks", 2.0 * per_task * n_tasks, "lower --tasks"
    )
    tasks = val_tasks(family, n_tasks)
    plan = memory_plan(ckpt, first, cfg)  # after the tasks: what they hold is not available
    chunk_size = plan.chunk_size
    if cfg.chunk_size is not None:  # a chunk sized by the budget fits it by construction
        checks.check_fits(
            f"priors: a chunk of {chunk_size} members", plan.budget, "lower --chunk-size"
        )
    if cfg.n_select:  # selection populations are not chunked: refuse one the machine cannot hold
        checks.check_fits(
            f"priors: strategy-selection populations of {cfg.select_population} members",
            plan.per_member * cfg.select_population,
            "lower --select-population",
        )
    if log is not None:
        log(plan.line())
    space = broad_space(
        list(ckpt.candidates), max_batch=int(tasks[0].x_train.shape[0]), max_steps=max_steps
    )
    rng = np.random.default_rng(seed)
    sizes = round_sizes(n_configs, cfg.rounds)
    prior = broad_prior(space)
    configs: list[dict[str, Any]] = []
    table: EvalTable | None = None

    def refit(
        table: EvalTable, selection: np.ndarray | None = None
    ) -> tuple[Prior, list[dict[str, Any]], dict[str, float], dict[str, Any]]:
        return fit_from_table(
            space,
            configs,
            table,
            cfg.quantile,
            cfg.portfolio_size,
            cfg.shrink,
            cfg.condition_on,
            cfg.best_of,
            selection,
            cfg.safe_rate,
        )

    # Both objectives start from the standard fine-tunes (a quarter of the first round at
    # most), so a portfolio holds the default fine-tune whenever it is good on meta-val: without
    # them a sinusoid fit's portfolio held only head-only or cautious configs and lost to the
    # fixed protocol (2.67 vs 0.40 MSE; BENCHMARKS.md "Sinusoid toward 0.20").
    anchors = anchor_configs(space, ckpt, max_steps)[: sizes[0] // 4] if cfg.anchors else []
    for size in sizes:
        head = [] if configs else anchors  # anchors open the first round only
        new = head + prior.sample(size - len(head), rng)
        if objective == "anytime":  # every member of a population run trains its whole budget
            new = [{**c, "steps": max_steps} for c in new]

        def step(done: int, _total: int, before: int = len(configs) * n_tasks) -> None:
            if progress is not None:  # one count over the whole fit, re-runs included
                progress(before + done, cfg.fit_runs)

        part = evaluate_configs(
            ckpt,
            tasks,
            new,
            seed,
            chunk_size,
            step,
            grid_max=max_steps,
            first_index=len(configs),
            objective=objective,
            device=device,
        )
        configs, table = configs + new, part if table is None else table.concat(part)
        fitted = refit(table)
        prior = fitted[0]
    refine_repeats = cfg.refine_repeats
    if refine_repeats and table is not None:  # final selection on fresh-seed re-runs

        def rerun_step(done: int, _total: int) -> None:
            if progress is not None:
                progress(n_configs * n_tasks + done, cfg.fit_runs)

        rerun = evaluate_configs(
            ckpt,
            tasks,
            configs * refine_repeats,
            seed,
            chunk_size,
            rerun_step,
            grid_max=max_steps,
            first_index=n_configs,
            objective=objective,
            device=device,
        )
        fitted = refit(table, mean_of_repeats(rerun, refine_repeats)[0])
    learned, portfolio, model_probs, info = fitted
    priors = Priors(VERSION, space, learned, portfolio, model_probs, info)
    if cfg.n_select:
        chosen, disjoint = selection_tasks(family, n_tasks, cfg.n_select, tasks)
        priors.selection = select_strategy(
            ckpt,
            priors,
            chosen,
            population=cfg.select_population,
            steps=max_steps,
            interval=cfg.select_interval,
            seed=seed,
            tasks_disjoint=disjoint,
            progress=select_progress,
        )
    info |= {
        "family": ckpt.family.to_dict(),
        "n_tasks": n_tasks,
        "n_configs": n_configs,
        "seed": seed,
        "quantile": cfg.quantile,
        "rounds": sizes,
        "refine_repeats": refine_repeats,
        "fit_runs": cfg.fit_runs,
        "objective": objective,
        "anchors": len(anchors),  # standard fine-tunes that opened the first round
        "max_steps": max_steps,
        "memory": plan.to_dict(),
        "fit_seconds": time.perf_counter() - t0,
    }
    return priors


def selection_tasks(
    family: TaskFamily, after: int, n: int, fitted: Sequence[Task]
) -> tuple[list[Task], bool]:
    """Meta-val tasks for strategy selection: the ``n`` after the ``after`` the priors were
    fitted on, or, where the family has too few, the fitted ones again (flagged False)."""
    try:
        return val_tasks(family, n, start=after), True
    except DataError:
        return list(fitted[:n]), False
