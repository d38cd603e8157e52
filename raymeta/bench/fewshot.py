"""``raymeta bench fewshot``: the standard few-shot benchmarks beside the published numbers,
with the baselines that keep meta-learning honest (issue 18).

Why this exists: a researcher comparing raymeta with other meta-learning libraries looks first at
Omniglot and the MAML sinusoid beside the papers' numbers, and the few-shot literature since 2019
("A Closer Look at Few-shot Classification", "Rethinking Few-Shot Image Classification") shows
that supervised pretraining followed by fine-tuning or a linear probe often matches MAML. So every
setting runs, with raymeta's own code paths and under ONE fine-tuning budget (the same steps and
the same support data for every row):

* **meta-init, paper protocol**: ``raymeta.meta_train`` (MAML), then SGD at the meta-training inner
  learning rate on the whole support set, all layers (``hparams.default_config``);
* **meta-init, learned priors**: the same init, fine-tuned with the first config of the portfolio
  ``raymeta.fit_priors`` learned on the family's meta-val tasks (not a hand-set rate);
* **meta-init, selected on meta-val**: the same init with whichever of the fixed protocol and the
  portfolio's configs scores best on the meta-val episodes, the fixed protocol kept unless beaten
  by more than ``auto``'s 5% tolerance: what raymeta's ``auto`` strategy does (choose on meta-val
  evidence), so a small or poor priors fit cannot lose to the fixed protocol by construction of
  the row, only by a val-to-test gap;
* **pretrain + fine-tune / linear probe**: the ``algo=pretrain`` candidate (on digits and
  Omniglot one C-way classifier over all meta-train classes with their global labels, then a
  zero N-way head: the "Closer Look" baseline, ``core.pretrain``; on sinusoid multi-task
  training on the meta-train episodes), fine-tuned with its own fitted priors' best
  all-layer config, and with its best head-only config (``adapt=head``: a linear probe);
* **scratch**: a seeded random init per episode with the paper protocol's config.

Fine-tuning and scoring go through ``raymeta.finetune.population.Population`` (the runner of
``tune``, sweeps and priors fitting): the test episodes are the population's members, each on
its own support set, scored on its own query set. Each number is a mean over test episodes
(tasks) with a 95% normal interval ``mean +- 1.96 * sd / sqrt(n)`` (``interval``).

Budgets: ``full`` is the standard protocol (Omniglot needs a GPU: ``benchmarks/gpu_fewshot.sh``),
``cpu`` a reduced preset that finishes in minutes on a 2-core CPU (its rows say "cpu budget"),
``smoke`` seconds, for the tests.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "standard few-shot benchmarks (Omniglot, sinusoid, digits) beside published numbers"
SUITES = ("omniglot", "sinusoid", "digits")
BUDGETS = ("smoke", "cpu", "full")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
OMNIGLOT_ENV = "RAYMETA_OMNIGLOT"
PRIORS_PICKS = ("val", "first")  # how a learned-priors row picks its config (``pick_config``)
MAX_EPISODES = 10_000  # test episodes: one population; checked up front, not after training
VAL_EPISODES = 64  # meta-val episodes ``val`` picks on (at most as many as test episodes)

# published anchors (percent accuracy; sinusoid: MSE after 1 / 5 / 10 steps)
OMNIGLOT_ANCHORS: dict[str, dict[str, float]] = {
    "5w1s": {"MAML": 98.7, "Meta-SGD": 99.53, "MAML++": 99.47, "ProtoNets": 98.8},
    "5w5s": {"MAML": 99.9},
    "20w1s": {"MAML": 95.8},
    "20w5s": {"MAML": 98.9},
}
SINUSOID_ANCHORS = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}}
TARGETS = {("omniglot", "5w1s"): 99.3, ("omniglot", "20w1s"): 96.5, ("sinusoid", "*"): 0.20}


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: the family, how raymeta meta-trains and pretrains on it, and the
    evaluation protocol (``episodes`` test tasks, ``ft_steps`` fine-tuning steps for every row,
    scored after each of ``report_steps``)."""

    suite: str
    name: str
    family_options: dict[str, Any]
    meta: dict[str, Any]  # MetaTrainConfig fields of the meta-learned init
    pretrain_steps: int
    episodes: int
    ft_steps: int
    report_steps: tuple[int, ...]
    priors: dict[str, Any]  # PriorFitConfig fields
    anchors: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def family(self) -> str:
        return self.suite

    @property
    def higher_is_better(self) -> bool:
        return self.suite != "sinusoid"

    @property
    def metric(self) -> str:
        return "mse" if self.suite == "sinusoid" else "accuracy_pct"


# ----------------------------------------------------------------------------- presets
def _priors(budget: str) -> dict[str, Any]:
    if budget == "smoke":
        return {"n_tasks": 2, "n_configs": 4, "rounds": 1, "refine_repeats": 0}
    if budget == "cpu":
        return {"n_tasks": 8, "n_configs": 24, "rounds": 2, "refine_repeats": 1}
    return {"n_tasks": 32, "n_configs": 64, "rounds": 2, "refine_repeats": 2}


def _classification(
    suite: str,
    name: str,
    budget: str,
    family_options: dict[str, Any],
    meta: dict[str, Any],
    pretrain_steps: int,
    episodes: int,
    anchors: dict[str, Any] | None = None,
) -> Setting:
    """An image suite's setting: 10 fine-tuning steps scored at the last (2 in smoke runs)."""
    smoke = budget == "smoke"
    return Setting(
        suite,
        name,
        family_options=family_options,
        meta=meta,
        pretrain_steps=pretrain_steps,
        episodes=episodes,
        ft_steps=2 if smoke else 10,
        report_steps=(2,) if smoke else (10,),
        priors=_priors(budget),
        anchors=anchors or {},
    )


def _sinusoid(budget: str) -> list[Setting]:
    fam = {"shots": 5, "queries": 10, "task_shots": 5, "test_size": 100}
    base = {
        "model": "mlp",
        "model_options": {"widths": [40, 40]},
        "meta_batch": 25,
    }
    paper = {**base, "algo": "maml", "inner_steps": 1, "inner_lr": 0.01, "outer_lr": 1e-3}
    tuned = {**base, "algo": "maml", "inner_steps": 5, "inner_lr": 0.01, "outer_lr": 1e-3}
    best = {
        **base,
        "model_options": {"widths": [40, 40, 40]},
        "algo": "maml",
        "inner_steps": 1,
        "inner_lr": 0.01,
        "outer_lr": 1e-2,
        "outer_schedule": "cosine",
        "outer_lr_min": 1e-5,
    }
    # learned per-step inner rates (LSLR) over 3 inner steps, the rates at a tenth of the outer
    # rate (BENCHMARKS.md "Learned inner rates on sinusoid")
    own = 3
    lslr = {**best, "inner_steps": own, "learn_inner_lr": True, "rates_lr_scale": 0.1}
    steps = {
        "smoke": (3, 3, 3, 3),
        "cpu": (10_000, 4_000, 20_000, 5_000),
        "full": (70_000, 70_000, 70_000, 70_000),
    }[budget]
    episodes = 20 if budget == "smoke" else 500
    pre = {"smoke": 3, "cpu": 3_000, "full": 10_000}[budget]
    smoke = budget == "smoke"
    ft_steps, report = (2, (1, 2)) if smoke else (10, (1, 5, 10))
    lslr_report = tuple(sorted({*report, own})) if own <= ft_steps else report
    common = dict(
        family_options=fam,
        pretrain_steps=pre,
        episodes=episodes,
        ft_steps=ft_steps,
        report_steps=report,
        priors=_priors(budget),
        anchors=SINUSOID_ANCHORS,
    )
    return [
        Setting(
            "sinusoid",
            "K5-maml1",
            meta={**paper, "steps": steps[0]},
            **common,  # type: ignore[arg-type]
        ),
        Setting(
            "sinusoid",
            "K5-maml5",
            meta={**tuned, "steps": steps[1]},
            **common,  # type: ignore[arg-type]
        ),
        Setting(
            "sinusoid",
            "K5-best",
            # toward the 0.20 (BENCHMARKS.md "Sinusoid toward 0.20"): at 1,500 meta-steps
            # (outer lr 5e-3, 10-step MSE on the 500 test tasks) 3 hidden layers of 40 reached
            # 0.428 vs 0.572 for 40x40 (2x100: 0.428 at 2.3x the step time, 4x40: 0.446, 5 inner
            # steps: 3.3x the step time, no better per second); outer lr 1e-2 reached 0.368
            meta={**best, "steps": steps[2]},
            **common,  # type: ignore[arg-type]
        ),
        Setting(
            "sinusoid",
            "K5-lslr",
            meta={**lslr, "steps": steps[3]},
            # the learned loop is judged after its own steps, so the table shows them too
            **{**common, "report_steps": lslr_report},  # type: ignore[arg-type]
        ),
        Setting(
            "sinusoid",
            "K5-mamlpp",
            # without LSLR: with learned inner rates the cpu preset diverged at step 731
            # (BENCHMARKS.md, few-shot section)
            meta={**tuned, **maml_plus_plus(steps[1]), "learn_inner_lr": False, "steps": steps[1]},
            **common,  # type: ignore[arg-type]
        ),
    ]


def architecture(meta: Mapping[str, Any]) -> str:
    """The model a row's init used, for the report (the sinusoid settings differ in it):
    ``mlp 40x40x40``, ``conv4 hidden 32``; empty for a record that did not store it."""
    model, opts = meta.get("model"), meta.get("model_options") or {}
    if not model:
        return ""
    if "widths" in opts:
        return f"{model} {'x'.join(str(w) for w in opts['widths'])}"
    if "hidden" in opts:
        return f"{model} hidden {opts['hidden']}"
    return str(model)


def plus_label(meta: Mapping[str, Any]) -> str:
    """``MAML++`` with all its options, ``MAML++ w/o LSLR`` without learned inner rates,
    ``MAML+LSLR`` with learned inner rates but not the multi-step loss."""
    if meta.get("learn_inner_lr"):
        return "MAML++" if meta.get("multi_step_loss") else f"{str(meta['algo']).upper()}+LSLR"
    if meta.get("multi_step_loss"):
        return "MAML++ w/o LSLR"
    return str(meta["algo"]).upper()


def maml_plus_plus(steps: int) -> dict[str, Any]:
    """MAML++'s meta-train options (Antoniou et al. 2019) for a run of ``steps`` outer steps:
    the multi-step loss over the first fifth, learned per-layer per-step inner rates (LSLR),
    cosine annealing of the outer rate, first-order for the first tenth."""
    return {
        "multi_step_loss": max(steps // 5, 1),
        "learn_inner_lr": True,
        "outer_schedule": "cosine",
        "outer_lr_min": 1e-5,
        "first_order_until": steps // 10,
    }


def _omniglot(budget: str, path: str) -> list[Setting]:
    fam_base = {"path": path, "queries": 15, "test_size": 15}
    grid = {  # name: ways, shots, inner steps, inner lr, meta-batch (the MAML paper's Omniglot)
        "5w1s": (5, 1, 1, 0.4, 32),
        "5w5s": (5, 5, 1, 0.4, 32),
        "20w1s": (20, 1, 5, 0.1, 16),
        "20w5s": (20, 5, 5, 0.1, 16),
    }
    if budget == "smoke":  # 14x14 images: seconds, for the tests
        names, hidden, steps, pre, episodes = ["5w1s"], 16, 2, 2, 10
        fam_base["image_size"] = 14
    elif budget == "cpu":
        names, hidden, steps, pre, episodes = ["5w1s"], 32, 150, 150, 200
    else:
        names, hidden, steps, pre, episodes = [], 64, 0, 0, 600
        for n in grid:  # each standard setting with plain MAML, then with MAML++
            names += [n, f"{n}-mamlpp"]
    out = []
    for name in names:
        plus = name.endswith("-mamlpp")
        ways, shots, k, lr, mb = grid[name.removesuffix("-mamlpp")]
        if budget == "full":
            # sized from the Conv4 throughput measured on an H100 / H200 (~1,100 tasks/s at
            # meta-batch 32, one inner step; BENCHMARKS.md "GPU"): ~4 min of 5-way and ~9 min
            # of 20-way meta-training (5 inner steps, 4x the images); not yet run on a GPU
            steps, pre = (3_000, 2_000) if ways == 5 else (1_000, 600)
            if plus:  # 5 inner steps (MAML++'s Omniglot setting): about 5x a 1-step MAML step
                k, lr, steps = 5, 0.1, (2_000 if ways == 5 else 800)
        if budget == "cpu":
            k, mb = 1, 4
        if budget == "smoke":
            k, mb = 1, 2
        meta = {
            "model": "conv4",
            "model_options": {"hidden": hidden},
            "algo": "maml",
            "inner_steps": k,
            "inner_lr": lr,
            "outer_lr": 1e-3,
            "meta_batch": mb,
            "steps": steps,
        }
        if plus:
            meta.update(maml_plus_plus(steps))
        fam = {**fam_base, "ways": ways, "shots": shots}
        anchors = OMNIGLOT_ANCHORS[name.removesuffix("-mamlpp")]
        out.append(_classification("omniglot", name, budget, fam, meta, pre, episodes, anchors))
    return out


def _digits(budget: str) -> list[Setting]:
    steps, pre, episodes, hidden = {
        "smoke": (2, 2, 10, 16),
        "cpu": (400, 400, 600, 32),
        "full": (10_000, 10_000, 600, 64),
    }[budget]
    out = []
    for shots in (1, 5):
        meta = {
            "model": "conv4",
            "model_options": {"hidden": hidden},
            "algo": "maml",
            "inner_steps": 1,
            "inner_lr": 0.4,
            "outer_lr": 1e-3,
            "meta_batch": {"smoke": 2, "cpu": 8, "full": 16}[budget],
            "steps": steps,
        }
        fam = {"ways": 5, "shots": shots, "queries": 15, "test_size": 15}
        out.append(_classification("digits", f"5w{shots}s", budget, fam, meta, pre, episodes))
    return out


def settings(suite: str, budget: str, data_path: str | None = None) -> list[Setting]:
    """The settings of ``suite`` at ``budget`` (module docstring); a one-line ``ConfigError``
    for an unknown suite or budget, a ``data_path`` given to a suite that reads no data, or
    (omniglot) a missing data directory."""
    from raymeta.errors import ConfigError

    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r} (choose from {', '.join(SUITES)})")
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r} (choose from {', '.join(BUDGETS)})")
    if data_path is not None and suite != "omniglot":
        # the sinusoid tasks are generated and the digits ship in the package
        raise ConfigError(
            f"--data-path is the Omniglot directory; the {suite} suite reads no data files "
            "(drop --data-path)"
        )
    if suite == "sinusoid":
        return _sinusoid(budget)
    if suite == "digits":
        return _digits(budget)
    return _omniglot(budget, omniglot_path(data_path))


def omniglot_path(given: str | None) -> str:
    """The Omniglot directory (``--data-path``, else ``$RAYMETA_OMNIGLOT``), checked before any
    work: a missing directory or archive is one line."""
    import os

    from raymeta.errors import ConfigError, DataError
    from raymeta.tasks.omniglot import resolve_path

    try:
        return str(resolve_path(given if given else os.environ.get(OMNIGLOT_ENV)))
    except DataError as exc:
        raise ConfigError(f"{exc} (--data-path DIR)") from None


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` episodes with its 95% normal interval ``mean +- half``."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% half-width ``1.96 * sd / sqrt(n)`` (sample sd, ``n - 1``) of per-episode
    values; one value has half-width 0 (no spread to estimate)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("interval of no values")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n < 2:
        return Interval(mean, 0.0, n)
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    return Interval(mean, Z95 * math.sqrt(var / n), n)


# ----------------------------------------------------------------------------- fine-tuning
def finetune_episodes(
    cand: Any,
    tasks: Sequence[Any],
    config: Mapping[str, Any],
    init: str,
    report_steps: Sequence[int],
    seed: int,
    device: str = "cpu",
    chunk: int = 256,
) -> dict[int, list[float]]:
    """Fine-tune ``cand`` on every task's train (support) split with ``config`` and score it on
    the task's test (query) split after each of ``report_steps``: per-episode accuracy in percent
    (classification) or MSE. ``init`` is ``meta`` (the candidate's weights) or ``scratch``
    (a seeded random init per episode). Members = episodes, each on its own data."""
    import torch

    from raymeta.core.train import derive_seed
    from raymeta.finetune.population import Population, data_dtype, initial_state, run_schedule

    dev = torch.device(device)
    out: dict[int, list[float]] = {s: [] for s in report_steps}
    for start in range(0, len(tasks), chunk):
        part = tasks[start : start + chunk]
        xt, yt, xq, yq = (
            torch.stack([getattr(t, k) for t in part]).to(dev)
            for k in ("x_train", "y_train", "x_test", "y_test")
        )
        idx = list(range(start, start + len(part)))
        state = initial_state(
            cand.spec,
            cand.params if init == "meta" else None,
            [derive_seed(seed, 1, i) % 2**31 for i in idx],
            data_dtype(xt),
        ).to(dev)
        pop = Population(
            cand.spec,
            part[0].kind,
            cand.name,
            [dict(config, model=cand.name)] * len(part),
            [derive_seed(seed, 2, i) % 2**31 for i in idx],
            state,
            keep_best=False,
        )
        for ev in run_schedule(pop, (xt, yt), (xq, yq), list(report_steps), per_member_data=True):
            vals = ev.accuracy * 100.0 if ev.accuracy is not None else ev.loss
            out[ev.step].extend(float(v) for v in vals.tolist())
    return out


def portfolio_configs(
    portfolio: Sequence[Mapping[str, Any]], adapt: str | None, budget: int, n_train: int
) -> list[tuple[dict[str, Any], str]]:
    """The portfolio's configs with ``adapt`` (any when None), in portfolio order, steps capped
    at the budget and minibatches at the support set; without one of that ``adapt``, the first
    config with ``adapt`` set (said so). Each with where it came from."""
    idx = [i for i, c in enumerate(portfolio) if adapt is None or c.get("adapt", "all") == adapt]
    if idx:
        out = [(dict(portfolio[i]), f"priors portfolio #{i + 1}") for i in idx]
    else:
        out = [(dict(portfolio[0], adapt=adapt), f"priors portfolio #1 with adapt={adapt}")]
    for cfg, _ in out:
        cfg["steps"] = min(int(cfg.get("steps", budget)), budget)
        cfg["batch_size"] = min(int(cfg.get("batch_size", n_train)), n_train)
    return out


def pick_config(
    options: Sequence[tuple[dict[str, Any], str]],
    how: str,
    score: Callable[[dict[str, Any]], float],
    higher: bool,
    keep_first_within: float = 0.0,
) -> tuple[dict[str, Any], str]:
    """``first``: the portfolio's first config (the fit puts a safe one there: it must improve on
    most meta-val tasks); ``val``: the config with the best mean ``score`` on meta-val tasks
    (NaN and inf count as worst), which is how a tuner would choose among the portfolio.

    ``keep_first_within``: the first option (a default) is kept unless the best beats it by more
    than this relative margin, ``auto``'s rule (``finetune.select.TOLERANCE``). Why: a few dozen
    meta-val episodes cannot separate near-ties, and a config 0.5% better on meta-val with a
    16% larger rate lost to the default on test (sinusoid, BENCHMARKS.md "Sinusoid toward
    0.20"), so the default should be displaced by evidence, not by noise."""
    if how == "first" or len(options) == 1:
        return options[0]
    worst = -math.inf if higher else math.inf
    scores = [score(c) for c, _ in options]
    scores = [v if math.isfinite(v) else worst for v in scores]
    best = (max if higher else min)(range(len(options)), key=scores.__getitem__)
    first, top = scores[0], scores[best]
    margin = keep_first_within * abs(top)
    if best != 0 and math.isfinite(first) and abs(top - first) <= margin:
        cfg, src = options[0]
        return cfg, (
            f"{src}, within {keep_first_within:.0%} of the best of {len(options)} on meta-val"
        )
    cfg, src = options[best]
    return cfg, f"{src}, best of {len(options)} on meta-val"


def describe(cfg: Mapping[str, Any]) -> str:
    if cfg.get("learned_rates"):
        return f"the init's own inner loop, {cfg['steps']} steps"
    parts = [f"{cfg.get('optimizer', 'sgd')} lr {float(cfg['lr']):.3g}", f"{cfg['steps']} steps"]
    if cfg.get("adapt", "all") != "all":
        parts.append(f"adapt {cfg['adapt']}")
    if float(cfg.get("weight_decay", 0.0) or 0.0) > 1e-6:
        parts.append(f"wd {float(cfg['weight_decay']):.2g}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- one setting
Log = Callable[[str], None]


def _train(setting: Setting, algo: str, steps: int, seed: int, device: str, log: Log) -> Any:
    """Meta-train (or pretrain) with raymeta's in-process loop; the one-candidate checkpoint."""
    from raymeta.core.train import MetaTrainConfig, meta_train

    meta = dict(setting.meta)
    if algo == "pretrain":  # no inner loop, so none of MAML++'s inner-loop options
        meta = {k: v for k, v in meta.items() if k not in {*maml_plus_plus(1), "rates_lr_scale"}}
        meta.update(algo="pretrain", inner_steps=0)
    cfg = MetaTrainConfig(
        family=setting.family,
        family_options=dict(setting.family_options),
        seed=seed,
        val_every=max(steps // 5, 1),
        val_tasks=2 if steps < 100 else 32,
        **{**meta, "steps": steps},
    ).validate()
    t0 = time.perf_counter()

    def progress(step: int, m: dict[str, float]) -> None:
        log(
            f"  {algo} step {step}/{steps}: "
            + "  ".join(f"{k} {v:.3g}" for k, v in m.items())
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )

    tr = meta_train(cfg, progress=progress, log_every=max(steps // 5, 1), device=device)
    name = "pretrain" if algo == "pretrain" else "meta"
    ckpt = tr.to_checkpoint(metrics={"seconds": time.perf_counter() - t0}, name=name)
    return ckpt, time.perf_counter() - t0


def _pretrain_info(ckpt: Any) -> dict[str, Any]:
    """How the pretrain rows' init was trained (``core.pretrain``): ``global-labels`` (one
    C-way classifier over all meta-train classes, then a zero N-way head: the "Closer Look"
    baseline) or ``episodic`` (multi-task on episodes: regression families), for the record."""
    from raymeta.core.pretrain import INFO_KEY, formulation_of

    info = ckpt.candidate().info
    out: dict[str, Any] = {"formulation": formulation_of(info)}
    entry = info.get(INFO_KEY) or {}
    for key in ("classes", "batch_size", "head_init"):
        if key in entry:
            out[key] = entry[key]
    return out


def _pretrain_how(pre: Mapping[str, Any]) -> str:
    """`` (global labels, 24-way)`` / `` (episodic)`` for the report's footer; nothing for a
    record written before the formulation was recorded."""
    how = pre.get("formulation")
    if how == "global-labels":
        return (
            f" (global labels, {pre.get('classes', '?')}-way, batch {pre.get('batch_size', '?')})"
        )
    return f" ({how})" if how else ""


LEARNED = "learned rates (LSLR per step, then the inner lr; Meta-SGD per parameter)"


def learned_loop(meta: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """The row config of an init that learned its inner rates (``learn_inner_lr``, Meta-SGD),
    empty for one that did not. Why a row of its own: the fine-tuning runner applies one rate
    per member, so the learned rates reach only the engine's own inner loop (what Meta-SGD's
    and MAML++'s papers evaluate with); the fixed-protocol row beside it shows what a plain
    fine-tune of the same init gives."""
    if not (meta.get("learn_inner_lr") or meta.get("algo") == "metasgd"):
        return {}
    return {"learned_rates": True, "steps": steps, "inner_lr": float(meta["inner_lr"])}


def learned_loop_episodes(
    cand: Any,
    tasks: Sequence[Any],
    meta: Mapping[str, Any],
    report_steps: Sequence[int],
    device: str = "cpu",
    chunk: int = 256,
) -> dict[int, list[float]]:
    """Per-episode query MSE (or accuracy in percent) after each of ``report_steps`` steps of
    the init's own inner loop (``MetaEngine.episode_scores``: first-order, with the rates the
    parameters carry), on the same episodes as ``finetune_episodes``."""
    import torch

    from raymeta.core.engine import InnerConfig, MetaEngine
    from raymeta.core.models import build_model
    from raymeta.tasks import TaskBatch

    dev = torch.device(device)
    model = build_model(cand.spec).to(dev)
    kind = tasks[0].kind
    inner = InnerConfig(int(meta["inner_steps"]), float(meta["inner_lr"]))
    engine = MetaEngine(model, kind, str(meta["algo"]), inner, chunk)
    params = {k: v.to(dev) for k, v in cand.params.items()}
    batch = TaskBatch(
        *(
            torch.stack([getattr(t, k) for t in tasks])
            for k in ("x_train", "y_train", "x_test", "y_test")
        )
    ).to(dev, next(iter(params.values())).dtype)
    out: dict[int, list[float]] = {}
    for s in report_steps:
        losses, accs = engine.episode_scores(params, batch, s)
        vals = accs * 100.0 if kind == "classification" else losses
        out[s] = [float(v) for v in vals.cpu()]
    return out


def _fit(ckpt: Any, setting: Setting, seed: int, device: str, log: Log) -> tuple[Any, float]:
    from raymeta.finetune.fit import fit_priors

    t0 = time.perf_counter()
    pri = fit_priors(
        ckpt,
        seed=seed,
        max_steps=setting.ft_steps,
        select_tasks=0,
        device=device,
        **setting.priors,
    )
    return pri, time.perf_counter() - t0


def run_setting(
    setting: Setting,
    budget: str,
    seed: int,
    device: str,
    episodes: int | None,
    log: Log,
    cache: dict[str, Any] | None = None,
    priors_pick: str = "val",
) -> dict[str, Any]:
    """Train the inits, fit their priors and score every row (module docstring) on the test
    episodes; returns the setting's record (rows with per-step intervals). ``cache`` shares
    what two settings of one suite have in common (the pretrained init, its priors, the
    baseline rows) when they differ only in how the meta-init is trained."""
    from raymeta.finetune.hparams import default_config
    from raymeta.finetune.select import TOLERANCE
    from raymeta.tasks import FamilySpec, make_family

    n_ep = episodes or setting.episodes
    log(f"== {setting.suite} {setting.name} ({budget} budget)")
    cache = {} if cache is None else cache
    meta_ckpt, meta_s = _train(setting, "maml", int(setting.meta["steps"]), seed, device, log)
    base = repr(
        (
            sorted(setting.family_options.items()),
            setting.meta["model"],
            setting.meta["model_options"],
            setting.meta["inner_lr"],
            setting.pretrain_steps,
            n_ep,
            seed,
            priors_pick,
        )
    )
    if base not in cache:
        pre = _train(setting, "pretrain", setting.pretrain_steps, seed, device, log)
        log(f"  fitting priors on meta-val tasks ({setting.priors})")
        cache[base] = (*pre, *_fit(pre[0], setting, seed, device, log))
    pre_ckpt, pre_s, pre_pri, pre_fit_s = cache[base]
    meta_pri, meta_fit_s = _fit(meta_ckpt, setting, seed, device, log)
    family = make_family(FamilySpec(setting.family, dict(setting.family_options)))
    tasks = [family.task("test", i) for i in range(n_ep)]  # type: ignore[arg-type]
    n_train = int(tasks[0].x_train.shape[0])
    budget_steps = setting.ft_steps
    lr = float(setting.meta["inner_lr"])
    fixed = default_config(lr, budget_steps, n_train, "meta")
    final_step = setting.report_steps[-1]
    n_val = min(VAL_EPISODES, n_ep)  # a smoke run's few episodes pick on as few
    val = [family.task("val", i) for i in range(n_val)]  # type: ignore[arg-type]

    def on_val(ckpt: Any) -> Callable[[dict[str, Any]], float]:
        seen: dict[str, float] = {}  # a config scored for two rows is fine-tuned once

        def score(cfg: dict[str, Any]) -> float:
            key = repr(sorted(cfg.items()))
            if key not in seen:
                got = finetune_episodes(
                    ckpt.candidate(), val, cfg, "meta", (final_step,), seed, device
                )[final_step]
                seen[key] = math.fsum(got) / len(got)
            return seen[key]

        return score

    higher = setting.higher_is_better
    meta_val = on_val(meta_ckpt)
    meta_opts = portfolio_configs(meta_pri.portfolio, None, budget_steps, n_train)
    meta_cfg, meta_how = pick_config(meta_opts, priors_pick, meta_val, higher)
    sel_cfg, sel_how = pick_config(
        [(dict(fixed), "fixed protocol"), *meta_opts], "val", meta_val, higher, TOLERANCE
    )
    pre_all, pre_all_how = pick_config(
        portfolio_configs(pre_pri.portfolio, "all", budget_steps, n_train),
        priors_pick,
        on_val(pre_ckpt),
        higher,
    )
    pre_head, pre_head_how = pick_config(
        portfolio_configs(pre_pri.portfolio, "head", budget_steps, n_train),
        priors_pick,
        on_val(pre_ckpt),
        higher,
    )
    algo = plus_label(setting.meta)
    # an init trained for its own inner loop (MAML++, learned rates): SGD at the inner lr is
    # not its paper's protocol
    proto = (
        "fixed SGD protocol" if "++" in algo or learned_loop(setting.meta, 1) else "paper protocol"
    )
    plan = [
        ("meta", f"raymeta {algo} init, {proto}", meta_ckpt, "meta", fixed, "fixed"),
        *(
            [
                (
                    "meta",
                    f"raymeta {algo} init, its learned inner loop",
                    meta_ckpt,
                    "meta",
                    own,
                    LEARNED,
                )
            ]
            if (own := learned_loop(setting.meta, budget_steps))
            else []
        ),
        ("meta", f"raymeta {algo} init + learned priors", meta_ckpt, "meta", meta_cfg, meta_how),
        ("meta", f"raymeta {algo} init, selected on meta-val", meta_ckpt, "meta", sel_cfg, sel_how),
        ("pretrain", "pretrain + fine-tune (paper protocol)", pre_ckpt, "meta", fixed, "fixed"),
        ("pretrain", "pretrain + fine-tune (priors)", pre_ckpt, "meta", pre_all, pre_all_how),
        ("pretrain", "pretrain + linear probe (priors)", pre_ckpt, "meta", pre_head, pre_head_how),
        ("scratch", "scratch (paper protocol)", meta_ckpt, "scratch", fixed, "fixed"),
    ]
    rows = []
    for kind, label, ckpt, init, cfg, how in plan:
        t0 = time.perf_counter()
        cand = ckpt.candidate()
        key = repr((base, label, sorted(cfg.items())))
        if kind != "meta" and key in cache:  # the same init and config on the same episodes
            rows.append(cache[key])
            continue
        if how == LEARNED:
            vals = learned_loop_episodes(cand, tasks, setting.meta, setting.report_steps, device)
        else:
            vals = finetune_episodes(cand, tasks, cfg, init, setting.report_steps, seed, device)
        ivs = {s: interval(v) for s, v in vals.items()}
        rows.append(
            {
                "row": label,
                "kind": kind,
                "init": init if init == "scratch" else cand.name,
                "config": {k: v for k, v in cfg.items() if k != "model"},
                "config_source": how,
                "results": {
                    str(s): {"mean": iv.mean, "ci95": iv.half, "low": iv.low, "high": iv.high}
                    for s, iv in ivs.items()
                },
                "n": n_ep,
                "seconds": time.perf_counter() - t0,
            }
        )
        cache[key] = rows[-1]
        last = ivs[setting.report_steps[-1]]
        log(f"  {label}: {fmt(last, setting.higher_is_better)} ({describe(cfg)}; {how})")
    return {
        "suite": setting.suite,
        "setting": setting.name,
        "budget": budget,
        "metric": setting.metric,
        "episodes": n_ep,
        "ft_steps": setting.ft_steps,
        "report_steps": list(setting.report_steps),
        "family_options": {k: v for k, v in setting.family_options.items() if k != "path"},
        "meta_train": {**setting.meta, "seconds": meta_s},
        "pretrain": {"steps": setting.pretrain_steps, "seconds": pre_s, **_pretrain_info(pre_ckpt)},
        "priors": {**setting.priors, "pick": priors_pick, "seconds": meta_fit_s + pre_fit_s},
        "anchors": {
            k: ({str(s): x for s, x in v.items()} if isinstance(v, dict) else v)
            for k, v in setting.anchors.items()
        },
        "rows": rows,
    }


# ----------------------------------------------------------------------------- the report
def fmt(iv: Interval, higher: bool) -> str:
    """``mean +- half``; ``diverged`` where an episode's fine-tune blew up (NaN)."""
    if not math.isfinite(iv.mean):
        return "diverged"
    if higher:
        return f"{iv.mean:.2f} +- {iv.half:.2f}"
    return f"{iv.mean:.3f} +- {iv.half:.3f}"


def row_interval(row: Mapping[str, Any], step: int) -> Interval:
    r = row["results"][str(step)]
    return Interval(float(r["mean"]), float(r["ci95"]), int(row["n"]))


def best_row(rec: Mapping[str, Any], kind: str, higher: bool) -> Mapping[str, Any]:
    """The row of ``kind`` with the best mean at the step it is judged at (``scored_step``:
    the last reported step, a learned inner loop's own length)."""
    rows = [r for r in rec["rows"] if r["kind"] == kind]

    def key(r: Mapping[str, Any]) -> float:  # a diverged row (NaN) is the worst
        m = row_interval(r, scored_step(rec, r)).mean
        return m if math.isfinite(m) else (-math.inf if higher else math.inf)

    return sorted(rows, key=key, reverse=higher)[0]


def verdict(rec: Mapping[str, Any]) -> str:
    """Where meta-learning wins and where pretraining does, from the intervals: a winner only
    where the best meta-learned row's interval and the best pretrained row's do not overlap."""
    higher = rec["metric"] != "mse"
    last = rec["report_steps"][-1]
    m, p = best_row(rec, "meta", higher), best_row(rec, "pretrain", higher)
    ms = scored_step(rec, m)
    mi, pi = row_interval(m, ms), row_interval(p, last)
    unit = "%" if higher else " MSE"
    after = f" after {ms} steps" if ms != last else ""
    nums = f"{m['row']} {mi.mean:.3g}{unit}{after} vs {p['row']} {pi.mean:.3g}{unit}"
    if mi.overlaps(pi):
        return f"{rec['setting']}: no clear winner, the 95% intervals overlap ({nums})"
    meta_wins = (mi.mean > pi.mean) == higher
    who = "meta-learning wins" if meta_wins else "pretraining wins"
    return f"{rec['setting']}: {who} ({nums}, intervals disjoint)"


def target_line(rec: Mapping[str, Any]) -> str | None:
    key = (rec["suite"], rec["setting"] if rec["suite"] != "sinusoid" else "*")
    if key not in TARGETS:
        return None
    goal = TARGETS[key]
    higher = rec["metric"] != "mse"
    best = best_row(rec, "meta", higher)
    step = scored_step(rec, best)
    value = row_interval(best, step).mean
    met = value >= goal if higher else value <= goal
    label = f"target {'>=' if higher else '<='} {goal}: {'met' if met else 'MISSED'}"
    if rec["budget"] != "full" and rec["suite"] == "omniglot":
        label += " (cpu budget: the target is for the full protocol)"
    return (
        f"{rec['setting']}: {label} (best meta row: {best['row']}, {value:.4g} after {step} steps)"
    )


def scored_step(rec: Mapping[str, Any], row: Mapping[str, Any]) -> int:
    """The step a row is judged at: the fine-tuning budget's last, or for a learned inner loop
    its own trained length (fixed before any test episode is seen: the steps its rates were
    learned for; past them the loop goes on at the inner lr, which it was not trained for)."""
    own = int(rec["meta_train"].get("inner_steps", 0))
    if row["config"].get("learned_rates") and str(own) in row["results"]:
        return own
    return int(rec["report_steps"][-1])


def render(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's lines: one table per setting, anchors first, then the verdicts."""
    lines: list[str] = []
    for rec in records:
        higher = rec["metric"] != "mse"
        steps = rec["report_steps"]
        tag = "" if rec["budget"] == "full" else f" [{rec['budget']} budget]"
        what = "accuracy % on" if higher else "MSE on"
        lines.append("")
        lines.append(
            f"{rec['suite']} {rec['setting']}{tag}: {what} {rec['episodes']} test episodes, "
            f"mean +- 95% interval, fine-tuning budget {rec['ft_steps']} steps on the support set"
        )
        w = max([44, *(len(r["row"]) + 2 for r in rec["rows"])])  # the label column fits all
        head = f"{'method':<{w}}" + "".join(f"{'step ' + str(s):>18}" for s in steps)
        lines.append(head + "  config")
        for name, v in rec["anchors"].items():
            cells = (
                "".join(f"{v.get(str(s), '-'):>18}" for s in steps)
                if isinstance(v, dict)
                else "".join(f"{'':>18}" for _ in steps[:-1]) + f"{v:>18}"
            )
            lines.append(f"{name + ' (published)':<{w}}{cells}")
        for row in rec["rows"]:
            cells = ""
            for s in steps:
                iv = row_interval(row, s)
                cell = fmt(iv, higher)
                cells += f"{cell:>18}"
            lines.append(f"{row['row']:<{w}}{cells}  {describe(row['config'])}")
        mt = rec["meta_train"]
        arch = architecture(mt)
        outer = f", outer lr {mt['outer_lr']:g}" if "outer_lr" in mt else ""
        if mt.get("outer_schedule", "constant") != "constant":
            outer += f" {mt['outer_schedule']} to {mt.get('outer_lr_min', 0.0):g}"
        lines.append(
            f"(meta-train: {arch + ', ' if arch else ''}{plus_label(mt)} {mt['steps']} steps, "
            f"{mt['inner_steps']} inner x lr {mt['inner_lr']}{outer}, meta-batch "
            f"{mt['meta_batch']}, {mt['seconds']:.0f} s; pretrain "
            f"{rec['pretrain']['steps']} steps{_pretrain_how(rec['pretrain'])}, "
            f"{rec['pretrain']['seconds']:.0f} s; priors fit "
            f"{rec['priors']['seconds']:.0f} s)"
        )
    lines.append("")
    for rec in records:
        t = target_line(rec)
        if t:
            lines.append(t)
    for rec in records:
        lines.append(verdict(rec))
    return lines


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from raymeta.bench.args import add_json_out

    p.add_argument("--suite", required=True, metavar="|".join(SUITES), help="which benchmark")
    p.add_argument(
        "--budget",
        default="cpu",
        metavar="|".join(BUDGETS),
        help="full = the standard protocol (GPU for omniglot), cpu = a reduced preset for a "
        "2-core CPU (labelled so), smoke = seconds (default: cpu)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--episodes", type=int, default=None, help="test episodes/tasks (default: the preset's)"
    )
    p.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this setting of the suite (e.g. 5w1s); repeatable",
    )
    p.add_argument(
        "--data-path",
        default=None,
        metavar="DIR",
        help=f"Omniglot directory, omniglot suite only (default: ${OMNIGLOT_ENV})",
    )
    p.add_argument(
        "--priors-pick",
        default="val",
        metavar="|".join(PRIORS_PICKS),
        help="the learned-priors rows' config: val = the portfolio config best on "
        f"{VAL_EPISODES} meta-val episodes, first = the portfolio's first (default: val)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    add_json_out(p, "also write the records as JSON")


def run(args: argparse.Namespace) -> int:
    """Check every input first (one-line ``ConfigError``s, exit 2), then run and report."""
    from raymeta import checks
    from raymeta.errors import ConfigError
    from raymeta.finetune.evaluate import eval_device

    if args.episodes is not None:
        checks.integer("--episodes", args.episodes, 1, MAX_EPISODES)
    checks.integer("--seed", args.seed, 0)
    chosen = settings(args.suite, args.budget, args.data_path)
    if args.setting:
        names = [s.name for s in chosen]
        bad = [n for n in args.setting if n not in names]
        if bad:
            raise ConfigError(
                f"--setting {bad[0]!r} is not a {args.suite} setting at budget {args.budget} "
                f"(choose from {', '.join(names)})"
            )
        chosen = [s for s in chosen if s.name in args.setting]
    eval_device(args.device)
    checks.string("--priors-pick", args.priors_pick, PRIORS_PICKS)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    t0 = time.perf_counter()
    cache: dict[str, Any] = {}
    records = [
        run_setting(
            s, args.budget, args.seed, args.device, args.episodes, log, cache, args.priors_pick
        )
        for s in chosen
    ]
    for line in render(records):
        print(line)
    seconds = time.perf_counter() - t0
    print(f"total {seconds:.0f} s on {args.device}")
    if args.out:
        from raymeta.core.checkpoint import versions
        from raymeta.fileio import atomic_write_json

        atomic_write_json(
            Path(args.out),
            {
                "benchmark": "fewshot",
                "suite": args.suite,
                "budget": args.budget,
                "device": args.device,
                "seed": args.seed,
                "seconds": seconds,
                "versions": versions(),
                "settings": records,
                "verdicts": [verdict(r) for r in records],
                "targets": [t for t in (target_line(r) for r in records) if t],
            },
        )
    sys.stdout.flush()
    return 0
