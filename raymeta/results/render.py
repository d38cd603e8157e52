"""Render a ``summarise`` result as an aligned text table, a Markdown table or JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "markdown", "json")


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _cells(summary: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    head = [
        "strategy",
        "n",
        f"{metric} mean",
        "95% CI",
        "regret",
        "rank",
        "member-steps to target",
        "wall s to target",
        "reached",
    ]
    body = []
    for d in summary:
        ci = "-" if math.isnan(d["ci95"]) else f"[{_num(d['ci_low'])}, {_num(d['ci_high'])}]"
        n = f"{d['n']}" + (f" ({d['failed']} diverged)" if d["failed"] else "")
        steps = "-" if d["steps_to_target"] is None else f"{d['steps_to_target']:.0f}"
        body.append(
            [
                d["strategy"],
                n,
                _num(d["mean"]),
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


def render(
    summary: Sequence[dict[str, Any]],
    fmt: str = "table",
    metric: str = "test_loss",
    target: float | None = None,
) -> str:
    """Text for ``raymeta report``; targets and medians are explained in a footer line."""
    if fmt == "json":
        doc = {
            "metric": metric,
            "target": target,
            "strategies": [{k: _json_safe(v) for k, v in d.items()} for d in summary],
        }
        return json.dumps(doc, indent=2)
    head, body = _cells(summary, metric)
    tgt = f"{target:g}" if target is not None else "per task, the worst strategy's mean final best"
    note = f"regret: mean normalised per task (0 best, 1 worst); rank: mean over tasks (1 best); to target: median over runs, target validation value = {tgt}"
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines) + f"\n\n{note}"
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in body), "", note])
