"""Human-readable tables of a ``Priors`` (what ``raymeta priors show`` prints)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from raymeta.priors.artifact import Priors
from raymeta.priors.prior import CategoricalDist, NumericDist
from raymeta.priors.space import Categorical, Float, Int, Param


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _seconds(v: Any) -> str:
    """A duration from ``info`` (free-form diagnostics: a file written by hand or by an older
    raymeta may hold anything there), or ``?``."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return f"{v:.1f}" if ok else "?"


def _percent(v: Any) -> str:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return f"{float(v):.0%}" if ok else "?"


def _space(p: Param) -> str:
    if isinstance(p, Categorical):
        return "{" + ", ".join(map(str, p.choices)) + "}"
    kind = "int" if isinstance(p, Int) else "float"
    return f"{kind}{' log' if p.log else ''} [{_fmt(p.low)}, {_fmt(p.high)}]"


def _dist(p: Param, d: Any) -> str:
    if isinstance(d, CategoricalDist) and isinstance(p, Categorical):
        return ", ".join(f"{c} {pr:.2f}" for c, pr in zip(p.choices, d.probs, strict=True))
    assert isinstance(d, NumericDist) and isinstance(p, Float | Int)
    if d.weight == 0.0:
        return "uniform"
    lo, mid, hi = (p.from_unit(d.mean + z * d.std) for z in (-1.2816, 0.0, 1.2816))
    return f"{d.weight:.2f} x peak at {_fmt(mid)} (80%: {_fmt(lo)}..{_fmt(hi)}) + {1 - d.weight:.2f} x uniform"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_priors(pr: Priors, candidates: dict[str, dict[str, Any]] | None = None) -> str:
    """The priors as tables; ``candidates`` (name -> model, algorithm, meta-val loss) adds what
    each model candidate is next to its probability."""
    info = pr.info  # diagnostics: every part read defensively (``_seconds``), never trusted
    family = info.get("family")
    fam = family.get("name", "?") if isinstance(family, Mapping) else "?"
    head = (
        f"priors v{pr.version}: family {fam}, {info.get('n_tasks', '?')} meta-val tasks x {info.get('n_configs', '?')} configs, "
        f"seed {info.get('seed', '?')}, top {info.get('quantile', '?')} quantile, fit {_seconds(info.get('fit_seconds', 0.0))} s"
    )
    # what the priors serve: raymeta tune wants --objective anytime --max-steps <steps per member>
    head += (
        f"\nfitted for --objective {info.get('objective', 'final (older file)')}"
        f", --max-steps {info.get('max_steps', '? (older file)')}"
    )
    rows = [[p.name, _space(p), _dist(p, pr.learned.dists[p.name])] for p in pr.space]
    cond = pr.learned.conditional
    if cond is not None:  # the sub-priors sampling actually uses, after the pooled marginals
        rows += [
            [f"{n} | {cond.on}={choice}", _space(pr.space[n]), _dist(pr.space[n], d)]
            for choice, sub in cond.dists.items()
            for n, d in sub.items()
        ]
    hp = _table(["hyperparameter", "broad space", "learned prior"], rows)
    names = pr.space.names()
    joint = pr.learned.joint
    if joint is not None:  # the mixture part over whole configs, heaviest centres first
        order = sorted(range(len(joint.probs)), key=lambda i: -joint.probs[i])[:8]
        rows = [
            [f"{joint.probs[i]:.3f}", *(_fmt(joint.centres[i].get(n)) for n in names)]
            for i in order
        ]
        hp += (
            f"\n\njoint part ({joint.weight:.3f} of the prior; kernels of width {joint.bandwidth:g}"
            f" on the unit coordinates around {len(joint.probs)} configs, categoricals kept with"
            f" p={joint.keep:g}; heaviest shown):\n" + _table(["weight", *names], rows)
        )
    regret = info.get("portfolio_regret")
    regret = regret if isinstance(regret, list) else []
    rows = [
        [str(i + 1), *(_fmt(c.get(n)) for n in names), _fmt(regret[i]) if i < len(regret) else ""]
        for i, c in enumerate(pr.portfolio)
    ]
    port = _table(["#", *names, "mean regret@k"], rows)
    if candidates:
        header = ["candidate", "model", "trained as", "meta-val loss", "P(best)"]
        rows = [
            [
                m,
                str(candidates.get(m, {}).get("model", "")),
                str(candidates.get(m, {}).get("algorithm", "")),
                _fmt(candidates.get(m, {}).get("val_loss", "")),
                f"{p:.2f}",
            ]
            for m, p in pr.model_probs.items()
        ]
        models = (
            "model candidates (P(best): the add-one smoothed share of meta-val tasks on which "
            "the candidate's best config won; tune and sweep populations draw their members' "
            "candidate from the prior):\n" + _table(header, rows)
        )
    else:
        models = _table(["model", "P(best)"], [[m, f"{p:.2f}"] for m, p in pr.model_probs.items()])
    parts = [head, hp, "portfolio (evaluate in this order):\n" + port, models]
    if pr.selection:
        parts.append(format_selection(pr.selection))
    return "\n\n".join(parts)


def format_selection(sel: dict[str, Any]) -> str:
    """The strategy-selection table: every arm x final pick on the meta-val tasks' test splits
    (rows that are not mappings, as a hand-edited or older file may hold, are left out: a
    malformed record was an AttributeError / TypeError from ``priors show``)."""
    table = sel.get("table")
    rows = [
        [
            ("* " if r.get("label") == sel.get("chosen_label") else "  ") + str(r.get("label")),
            _fmt(r.get("mean")),
            _fmt(r.get("ci95")),
            _fmt(r.get("median")),
            _fmt(r.get("rank")),
            _percent(r.get("win_rate_vs_chosen", 0.0)),
            _fmt(r.get("member_steps")),
        ]
        for r in (table if isinstance(table, list) else [])
        if isinstance(r, Mapping)
    ]
    disjoint = "" if sel.get("tasks_disjoint", True) else " (the priors' own tasks: too few others)"
    head = (
        f"strategy selection on {sel.get('tasks', '?')} meta-val tasks{disjoint}, test loss of "
        f"each strategy x final pick (population {sel.get('population', '?')}, "
        f"{sel.get('steps_per_member', '?')} steps per member); auto = {sel.get('chosen')}:\n"
        f"{sel.get('why', '')}"
    )
    table = _table(
        ["strategy", "mean", "±95%", "median", "rank", "wins vs *", "member-steps"], rows
    )
    return head + "\n" + table
