"""Render a ``summarise`` result as an aligned text table, a Markdown table or JSON; optionally
followed by the pairwise win-rate matrix of ``win_rates`` and the sentences of ``notes``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from raymeta.results.summary import CI_DESCRIPTION

FORMATS = ("table", "markdown", "json")


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _cells(summary: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    kind = next((d["ci_kind"] for d in summary if d.get("ci_kind")), "")
    head = [
        "sweep/strategy" if any("/" in d["strategy"] for d in summary) else "strategy",
        "n",
        "tasks",
        f"{metric} mean",
        "median",
        f"95% CI ({kind})" if kind else "95% CI",
        "regret",
        "rank",
        "member-steps to target",
        "wall s to target",
        "reached",
    ]
    body = []
    for d in summary:
        ci = "-" if math.isnan(d["ci_low"]) else f"[{_num(d['ci_low'])}, {_num(d['ci_high'])}]"
        n = f"{d['n']}" + (f" ({d['failed']} diverged)" if d["failed"] else "")
        steps = "-" if d["steps_to_target"] is None else f"{d['steps_to_target']:.0f}"
        body.append(
            [
                d["strategy"],
                n,
                f"{d['tasks']}",
                _num(d["mean"]),
                _num(d.get("median")),
                ci,
                f"{d['regret']:.3f}",
                f"{d['rank']:.2f}",
                steps,
                _num(d["wall_to_target"], 3),
                f"{d['reached']}/{d['runs']}",
            ]
        )
    return head, body


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


Wins = dict[tuple[str, str], dict[str, Any]]


def _win_matrix(summary: Sequence[dict[str, Any]], wins: Wins) -> tuple[list[str], list[list[str]]]:
    """Rows and columns numbered in summary order; cell = the row's share of shared tasks won
    against the column (ties count half), "-" on the diagonal and where no task is shared."""
    names = [d["strategy"] for d in summary]
    head = ["win rate (row vs column)"] + [f"[{j + 1}]" for j in range(len(names))]
    body = []
    for i, a in enumerate(names):
        cells = [f"[{i + 1}] {a}"]
        for b in names:
            w = wins.get((a, b))
            cells.append("-" if w is None else f"{w['rate']:.2f}")
        body.append(cells)
    return head, body


def _aligned(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(head), rule, *(line(r) for r in body)]


def _markdown(head: list[str], body: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def render(
    summary: Sequence[dict[str, Any]],
    fmt: str = "table",
    metric: str = "test_loss",
    target: float | None = None,
    *,
    wins: Wins | None = None,
    notes: Sequence[str] | None = None,
    scope: str | None = None,
) -> str:
    """Text for ``raymeta report``; targets and medians are explained in a footer line. With
    ``wins`` (from ``win_rates``) a pairwise win-rate matrix follows the table, then ``notes``
    (from ``summary.notes``), one per line; JSON holds both as ``win_rates`` (a list of
    {"a", "b", ...} objects) and ``notes``."""
    if fmt == "json":
        doc: dict[str, Any] = {
            "metric": metric,
            "target": target,
            "scope": scope,
            "interval": CI_DESCRIPTION,
            "strategies": [{k: _json_safe(v) for k, v in d.items()} for d in summary],
        }
        if wins is not None:
            doc["win_rates"] = [
                {"a": a, "b": b, **{k: _json_safe(v) for k, v in w.items()}}
                for (a, b), w in wins.items()
            ]
        if notes is not None:
            doc["notes"] = list(notes)
        return json.dumps(doc, indent=2)
    head, body = _cells(summary, metric)
    tgt = f"{target:g}" if target is not None else "per task, the worst strategy's mean final best"
    note = (
        f"mean, median, CI: over tasks, each task averaged over its seeds; {CI_DESCRIPTION}; "
        "regret: mean normalised per task (0 best, 1 worst); rank: mean over tasks (1 best); "
        f"to target: median over runs, target validation value = {tgt}"
    )
    table = _markdown if fmt == "markdown" else _aligned
    lines = [*table(head, body), "", note, *([scope] if scope else [])]
    if wins is not None and len(summary) > 1:
        lines += ["", *table(*_win_matrix(summary, wins)), ""]
        lines.append(
            "win rate: share of the tasks both ran on which the row beats the column, ties count half"
        )
    if notes:
        bullet = "- " if fmt == "markdown" else "note: "
        lines += ["", *(bullet + n for n in notes)]
    return "\n".join(lines)
