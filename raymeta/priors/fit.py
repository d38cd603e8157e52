"""Fit priors from meta-validation tasks: hyperparameter priors, a portfolio, model probabilities.

The recipe follows Syne Tune's quantile-based transfer (fit to each task's top quantile), with
shrinkage toward the broad space so tasks unlike the meta-val ones are never ruled out, plus
auto-sklearn 2's greedy portfolio and Quick-Tune-style model selection from per-task winners.
On top of that factorised prior sits a joint kernel mixture over whole good configs whose
weights minimise the expected best-of-n regret (``joint.py``); it carries most of the mass.
The portfolio and the joint weights are chosen on fresh-seed re-runs of every config, and the
portfolio's first pick must improve on the meta-init on most tasks (``refine.py``).

Constants were picked by measurement on sinusoid (1000 MAML steps, 32 val x 64 configs, scored
best-of-8 on 32 meta-test tasks, harness in BENCHMARKS.md): factorised only 0.23 best-of-8
regret; joint with top-8 uniform weights 0.22; best-of-8 weights 0.17; plus a second CEM round
0.15 (bandwidth 0.0001 / 0.03 / 0.08: 0.144 / 0.153 / 0.164, 0.03 kept so that samples are not
mere copies of the centres); broad space 0.37.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from raymeta import checks
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.models import check_model_fits
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.priors.artifact import VERSION, Priors
from raymeta.priors.dists import MIN_STD, CategoricalDist, Dist, NumericDist
from raymeta.priors.evaluate import OBJECTIVES, EvalTable, eval_device, evaluate_configs
from raymeta.priors.joint import fit_joint
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret, portfolio_curve
from raymeta.priors.prior import Conditional, Prior, broad_prior
from raymeta.priors.refine import REFINE_REPEATS, SAFE_RATE, mean_of_repeats, safe_mask
from raymeta.priors.space import WEIGHT_DECAY_FLOOR, Categorical, SearchSpace, broad_space
from raymeta.tasks import Task, TaskFamily, make_family

MIN_TASKS, MIN_CONFIGS = 2, 4
MAX_TASKS = 4096  # meta-val tasks of one fit (the default is 32): each is built and kept
MAX_FIT_RUNS = 1 << 20  # fine-tuning runs of one fit (the default is 6,144)
STD_FLOOR = 0.02  # on the unit coordinate: never collapse a prior onto a single value
SHRINK_TASKS = 0.5  # pseudo-count: tasks' worth of broad-space evidence (weight n / (n + this))
CONDITION_ON = "optimizer"  # numeric params get a sub-prior per value of this categorical
QUANTILE = 0.05  # top fraction of each task's configs the priors fit
ROUNDS = 2  # config batches: broad first, then from the prior fitted so far
MIN_BRANCH = 3  # top configs a sub-prior needs; with fewer the branch uses the pooled fit
JOINT_SHRINK = 1.5  # pseudo-count: joint weight n_tasks / (n_tasks + this), 0.955 at 32 tasks
BANDWIDTH = 0.03  # joint kernel width on each unit coordinate
KEEP = 0.95  # probability that a joint sample keeps its centre's categorical value
BEST_OF = 8  # the joint's centre weights minimise the expected best regret of this many draws


def val_tasks(family: TaskFamily, n: int, split: str = "val") -> list[Task]:
    """The first ``n`` fixed tasks of a meta-split; a family without them is a one-line error."""
    out = []
    for i in range(n):
        try:
            out.append(family.task(split, i))  # type: ignore[arg-type]
        except (RaymetaError, IndexError, KeyError) as exc:
            have = f"only {i}" if i else "no"
            raise DataError(
                f"family {family.name!r} has {have} meta-{split} tasks ({n} requested): {exc}"
            ) from None
    return out


def fit_numeric(units: np.ndarray, n_tasks: int, shrink: float = SHRINK_TASKS) -> NumericDist:
    """Truncated normal on the pooled top-quantile unit values, mixed with the uniform.

    The uniform's weight ``shrink / (n_tasks + shrink)`` is a pseudo-count: it fades as evidence
    from more tasks accumulates, yet never reaches zero (no broad-space value is ruled out).
    """
    mean = float(np.clip(units.mean(), 0.0, 1.0))
    std = float(max(units.std(), STD_FLOOR, MIN_STD))
    weight = n_tasks / (n_tasks + shrink)
    return NumericDist(weight=weight, mean=mean, std=std)


def fit_categorical(values: list[Any], choices: tuple[Any, ...]) -> CategoricalDist:
    """Additively smoothed frequencies (at least 2% of the evidence per choice)."""
    alpha = max(1.0, 0.02 * len(values))
    counts = np.array([sum(v == c for v in values) for c in choices], dtype=np.float64) + alpha
    return CategoricalDist(tuple(float(p) for p in counts / counts.sum()))


def model_probabilities(
    losses: np.ndarray, models: list[str], candidates: list[str]
) -> dict[str, float]:
    """P(model) = smoothed share of tasks on which the model's best config wins."""
    wins = dict.fromkeys(candidates, 1.0)
    arr = np.array(models)
    for row in losses:
        best = {
            m: np.nanmin(np.where(arr == m, row, np.inf)) for m in candidates if (arr == m).any()
        }
        wins[min(best, key=lambda m: best[m])] += 1.0
    total = sum(wins.values())
    return {m: w / total for m, w in wins.items()}


def fit_conditional(
    space: SearchSpace,
    top: list[tuple[int, dict[str, Any]]],
    on: str,
    pooled: dict[str, Dist],
    shrink: float,
) -> Conditional | None:
    """Per-choice numeric sub-priors of ``on``, each fitted to the top configs with that choice.

    A choice backed by fewer than ``MIN_BRANCH`` top configs keeps the pooled fit (its sub-prior
    is simply absent). The shrinkage counts the tasks that contributed to the branch.
    """
    parent = space.params.get(on)
    if not isinstance(parent, Categorical) or len(parent.choices) < 2:
        return None
    numeric = [p for p in space if not isinstance(p, Categorical)]
    out: dict[Any, dict[str, NumericDist]] = {}
    for choice in parent.choices:
        branch = [(t, c) for t, c in top if c[on] == choice]
        if len(branch) < MIN_BRANCH:
            continue
        n_t = len({t for t, _ in branch})
        out[choice] = {
            p.name: fit_numeric(
                np.array([p.to_unit(float(c[p.name])) for _, c in branch]), n_t, shrink
            )
            for p in numeric
            if isinstance(pooled.get(p.name), NumericDist)
        }
    return Conditional(on, out) if out else None


def fit_from_table(
    space: SearchSpace,
    configs: list[dict[str, Any]],
    table: EvalTable,
    quantile: float,
    portfolio_size: int,
    shrink: float = SHRINK_TASKS,
    condition_on: str | None = CONDITION_ON,
    best_of: int | None = BEST_OF,
    selection: np.ndarray | None = None,
    safe_rate: float | None = SAFE_RATE,
) -> tuple[Prior, list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """The pure fitting step on an evaluated [tasks, configs] table (``best_of=None``: no joint
    component, the factorised prior alone).

    ``selection`` ([tasks, configs] losses, e.g. the mean of fresh-seed re-runs, see
    ``refine.py``) replaces the table's scores for choosing the portfolio and the joint's
    centre weights; the factorised prior always fits the table's top quantile. ``safe_rate``
    restricts the portfolio's first pick to configs that improve on the meta-init on that share
    of tasks (``refine.safe_mask``; None: no restriction).
    """
    regret = normalised_regret(table.score, cap=table.init_loss)
    n_t, n_c = regret.shape
    k = max(2, math.ceil(quantile * n_c))
    order = np.argsort(regret, axis=1, kind="stable")[:, :k]
    top = [(t, configs[j]) for t, row in enumerate(order) for j in row]
    top_cfgs = [c for _, c in top]
    candidates = [str(c) for c in space["model"].choices] if "model" in space else []  # type: ignore[union-attr]
    model_probs = (
        model_probabilities(table.score, [str(c.get("model")) for c in configs], candidates)
        if candidates
        else {}
    )
    dists: dict[str, Dist] = {}
    for p in space:
        if p.name == "model" and model_probs:
            dists[p.name] = CategoricalDist(tuple(model_probs[str(c)] for c in p.choices))  # type: ignore[union-attr]
        elif isinstance(p, Categorical):
            dists[p.name] = fit_categorical([c[p.name] for c in top_cfgs], p.choices)
        else:
            dists[p.name] = fit_numeric(
                np.array([p.to_unit(float(c[p.name])) for c in top_cfgs]), n_t, shrink
            )
    cond = fit_conditional(space, top, condition_on, dists, shrink) if condition_on else None
    sel_losses = table.score if selection is None else np.asarray(selection, dtype=np.float64)
    if sel_losses.shape != table.score.shape:
        raise ConfigError(
            f"priors: selection table {sel_losses.shape} does not match {table.score.shape}"
        )
    sel = regret if selection is None else normalised_regret(sel_losses, cap=table.init_loss)
    first = None if safe_rate is None else safe_mask(sel_losses, table.init_loss, safe_rate)
    chosen = greedy_portfolio(sel, portfolio_size, first)
    joint = (
        fit_joint(space, configs, sel, n_t / (n_t + JOINT_SHRINK), BANDWIDTH, KEEP, best_of)
        if best_of
        else None
    )
    info = {
        "top_k": k,
        "shrink": shrink,
        "condition_on": cond.on if cond is not None else None,
        "best_of": best_of,
        "portfolio_regret": portfolio_curve(sel, chosen),
        "safe_rate": safe_rate,
        "first_pick_safe_configs": int(first.sum()) if first is not None else n_c,
        "broad_mean_regret": float(regret.mean()),
        "curve_steps": table.steps,
        "mean_val_curve": [
            float(v)
            for v in np.nanmean(np.minimum(table.curves, table.init_loss[:, :, None]), axis=(0, 1))
        ],
    }
    return Prior(space, dists, cond, joint), [dict(configs[j]) for j in chosen], model_probs, info


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
            c = {
                "lr": space["lr"].clip(lr),  # type: ignore[union-attr]
                "optimizer": opt,
                "weight_decay": WEIGHT_DECAY_FLOOR,
                "steps": max_steps,
                "batch_size": full,
                "adapt": "all",
                "model": name,
            }
            out.append(space.validate(c))
    return out


def round_sizes(n_configs: int, rounds: int) -> list[int]:
    """Configs per round: equal shares (the first takes the remainder), one round if too few."""
    rounds = max(1, min(int(rounds), n_configs // MIN_CONFIGS))
    base, extra = divmod(n_configs, rounds)
    return [base + extra] + [base] * (rounds - 1)


def fit_priors(
    ckpt: MetaCheckpoint,
    n_tasks: int = 32,
    n_configs: int = 64,
    seed: int = 0,
    quantile: float = QUANTILE,
    portfolio_size: int = 8,
    max_steps: int = 100,
    chunk_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    rounds: int = ROUNDS,
    shrink: float = SHRINK_TASKS,
    condition_on: str | None = CONDITION_ON,
    best_of: int | None = BEST_OF,
    refine_repeats: int = REFINE_REPEATS,
    safe_rate: float | None = SAFE_RATE,
    objective: str = "final",
    device: str = "cpu",
) -> Priors:
    """Fine-tune ``n_configs`` configs on ``n_tasks`` meta-val tasks and fit priors.

    The configs come in ``rounds`` equal batches (cross-entropy-method style): the first from
    the broad space, each later one from the prior fitted to everything evaluated so far, so the
    fixed budget of fine-tuning runs lands where good configs are and the final fit (over all
    rounds) resolves the good region instead of 64 scattered points in 7 dimensions.

    ``objective="anytime"`` fits priors for population runs (``raymeta tune``, sweeps): every
    config's ``steps`` is ``max_steps`` (set it to the run's steps per member) and configs are
    ranked by their anytime loss (``evaluate.py``). With ``"final"`` a config is one fine-tuning
    run of its own ``steps``: on digits that picked 4-7-step head-only configs, which top out
    above a full fine-tune once a tune run trains them for its whole budget. ``device``
    is where the fine-tuning populations train (``"cuda"`` on a GPU machine).
    """
    c = checks
    c.integer("priors: tasks", n_tasks, MIN_TASKS, MAX_TASKS)
    c.integer("priors: configs", n_configs, MIN_CONFIGS)
    c.integer("priors: seed", seed, 0)
    c.number("priors: quantile", quantile, 0.0, 1.0, low_open=True)
    c.integer("priors: portfolio size", portfolio_size, 1)
    c.integer("priors: max-steps", max_steps, 1)
    c.integer("priors: chunk-size", chunk_size, 1)
    c.integer("priors: rounds", rounds, 1)
    c.number("priors: shrink", shrink, 0.0, low_open=True)
    if best_of is not None:
        c.integer("priors: best-of", best_of, 1)
    c.integer("priors: refine repeats", refine_repeats, 0)
    if safe_rate is not None:
        c.number("priors: safe rate", safe_rate, 0.0, 1.0)
    c.string("priors: objective", objective, tuple(OBJECTIVES))
    c.string("priors: device", device)
    runs = (1 + refine_repeats) * n_configs * n_tasks
    if runs > MAX_FIT_RUNS:
        raise ConfigError(
            f"priors: {n_tasks} tasks x {n_configs} configs x {1 + refine_repeats} runs = {runs:,} "
            f"fine-tuning runs, more than the {MAX_FIT_RUNS:,} a fit may take (lower --tasks, "
            "--configs or --refine-repeats)"
        )
    for cand in ckpt.candidates.values():  # one chunk of members: weights, Adam moments, best
        n_params = check_model_fits(cand.spec)
        c.check_fits(
            f"priors: a chunk of {chunk_size} members of {cand.name!r} ({n_params:,} parameters)",
            4.0 * 6 * n_params * min(chunk_size, runs),
            "lower --chunk-size",
        )
    eval_device(device)  # fail before any fine-tuning
    t0 = time.perf_counter()
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
    space = broad_space(
        list(ckpt.candidates), max_batch=int(tasks[0].x_train.shape[0]), max_steps=max_steps
    )
    rng = np.random.default_rng(seed)
    sizes = round_sizes(n_configs, rounds)
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
            quantile,
            portfolio_size,
            shrink,
            condition_on,
            best_of,
            selection,
            safe_rate,
        )

    # The final objective's tuned numbers (issue 4) were measured without anchors; anytime fits
    # (population runs) start from them. Anchors take at most a quarter of the first round.
    anchors = (
        anchor_configs(space, ckpt, max_steps)[: sizes[0] // 4] if objective == "anytime" else []
    )
    for size in sizes:
        head = [] if configs else anchors  # anchors open the first round only
        new = head + prior.sample(size - len(head), rng)
        if objective == "anytime":  # every member of a population run trains its whole budget
            new = [{**c, "steps": max_steps} for c in new]

        def step(done: int, _total: int, before: int = len(configs) * n_tasks) -> None:
            if progress is not None:
                progress(before + done, n_configs * n_tasks)

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
    if refine_repeats and table is not None:  # final selection on fresh-seed re-runs
        rerun = evaluate_configs(
            ckpt,
            tasks,
            configs * refine_repeats,
            seed,
            chunk_size,
            progress,
            grid_max=max_steps,
            first_index=n_configs,
            objective=objective,
            device=device,
        )
        fitted = refit(table, mean_of_repeats(rerun, refine_repeats)[0])
    learned, portfolio, model_probs, info = fitted
    info |= {
        "family": ckpt.family.to_dict(),
        "n_tasks": n_tasks,
        "n_configs": n_configs,
        "seed": seed,
        "quantile": quantile,
        "rounds": sizes,
        "refine_repeats": refine_repeats,
        "fit_runs": (1 + refine_repeats) * n_configs * n_tasks,
        "objective": objective,
        "fit_seconds": time.perf_counter() - t0,
    }
    return Priors(VERSION, space, learned, portfolio, model_probs, info)
