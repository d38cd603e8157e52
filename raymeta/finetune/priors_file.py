"""``raymeta.write_priors``: store priors in a meta-checkpoint only if a tune of it can use them.

The storage step (``raymeta.core.checkpoint.write_priors``) knows priors as JSON only, and the
file is checksummed with the checkpoint, so whatever it is given is trusted on every later read.
It took any non-empty mapping: ``{"which": 1}`` replaced a checkpoint's good priors, and every
later ``raymeta tune`` / ``priors show`` / sweep of that checkpoint failed, some of them only
inside a Ray trial (a portfolio naming a model the checkpoint lacks). This module checks, before
anything is written, what those readers need:

* the file's format (``raymeta.priors.Priors.from_dict``: format, version, space, learned
  prior, portfolio, model probabilities, strategy selection);
* every hyperparameter of the space is one of the fine-tuning vocabulary
  (``finetune.hparams``), with bounds or choices its members accept, and the ``model``
  choices, portfolio models and model probabilities name candidates of this checkpoint;
* every portfolio config is a valid config (``FinetuneConfig``), the model probabilities are
  probabilities, and a recorded strategy choice is a strategy label.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.checkpoint import write_priors as store_priors
from raymeta.errors import CheckpointError, ConfigError
from raymeta.finetune.hparams import FinetuneConfig, hparams
from raymeta.finetune.strategy import AUTO, Strategy
from raymeta.priors import Categorical, Float, Int, Priors


def write_priors(path: str | Path, priors: Priors | Mapping[str, Any]) -> None:
    """Add or replace the priors of the meta-checkpoint at ``path`` (atomically, under its
    write lock; see ``raymeta.core.checkpoint.write_priors``), after ``check_priors``.

    ``priors`` is a ``Priors`` (``raymeta.fit_priors(...)``) or its ``to_dict()``. A mapping
    a tune of this checkpoint could not use is one ``ConfigError`` and nothing is written."""
    if isinstance(priors, Priors):
        data: Any = priors.to_dict()
    elif isinstance(priors, Mapping):
        data = dict(priors)
    else:
        data = priors  # the storage step refuses it in its own words
    if isinstance(data, dict) and data and _json_data(data):
        parsed = parse_priors(data)  # the format first: no lock, no checkpoint read
        store_priors(path, data, check=lambda ckpt: check_priors(parsed, ckpt))
    else:
        store_priors(path, data)  # not a JSON mapping: refused in the storage step's words


def _json_data(data: dict[str, Any]) -> bool:
    """Whether the storage step can write ``data`` as JSON (as it serialises it)."""
    try:
        json.dumps(data, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def parse_priors(data: Mapping[str, Any]) -> Priors:
    """``data`` as ``Priors`` (``Priors.from_dict``), its faults as ``ConfigError``s about the
    given priors (the reader's words are about a file on disk)."""
    try:
        pr = Priors.from_dict(data)
    except CheckpointError as exc:
        why = str(exc).removeprefix("priors.json ")
        raise ConfigError(
            f"priors {why} (write a Priors: raymeta.fit_priors(...) or its .to_dict())"
        ) from None
    return pr


def check_priors(pr: Priors, ckpt: MetaCheckpoint) -> None:
    """Everything a tune, sweep or ``priors show`` of ``ckpt`` reads from ``pr``, checked
    (module docstring); a fault is one ``ConfigError`` naming the part."""
    cands = list(ckpt.candidates)
    vocab = {h.name: h for h in hparams()}
    for p in pr.space:
        h = vocab.get(p.name)
        if h is None:
            raise ConfigError(
                f"priors: hyperparameter {p.name!r} is not a fine-tuning hyperparameter "
                f"(known: {', '.join(vocab)})"
            )
        where = f"priors: hyperparameter {p.name!r}"
        if h.kind == "name":  # ``model``: the checkpoint's candidates
            if not isinstance(p, Categorical):
                raise ConfigError(f"{where} must be a choice of model candidates")
            _candidates(p.choices, cands, where)
            continue
        if isinstance(p, Categorical):
            values: list[Any] = list(p.choices)
        elif isinstance(p, Float) and h.kind in ("int", "choice"):
            raise ConfigError(f"{where} takes {'integers' if h.kind == 'int' else 'choices'}")
        elif isinstance(p, (Float, Int)):
            values = [p.low, p.high]
        else:  # pragma: no cover - SearchSpace holds only these three
            raise ConfigError(f"{where} has an unknown kind")
        try:
            for v in values:
                h.check(v)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    for i, c in enumerate(pr.portfolio):
        try:
            cfg = FinetuneConfig(c)
        except ConfigError as exc:
            raise ConfigError(f"priors: portfolio config {i}: {exc}") from None
        if cfg["model"] is not None:
            _candidates([cfg["model"]], cands, f"priors: portfolio config {i}")
    _candidates(list(pr.model_probs), cands, "priors: model_probs")
    for name, prob in pr.model_probs.items():
        if not (isinstance(prob, numbers.Real) and math.isfinite(prob) and 0 <= prob <= 1):
            raise ConfigError(f"priors: model_probs[{name!r}] must be a probability, got {prob!r}")
    if pr.selection is not None:
        chosen = str(pr.selection["chosen"])
        try:
            if chosen == AUTO:
                raise ConfigError("auto is what this choice resolves, not a strategy")
            Strategy.from_label(chosen)
        except ConfigError as exc:
            raise ConfigError(f"priors: selection's chosen strategy {chosen!r}: {exc}") from None


def _candidates(names: Any, cands: list[str], where: str) -> None:
    bad = [n for n in names if n not in cands]
    if bad:
        raise ConfigError(
            f"{where} names model {bad[0]!r}, not a candidate of this meta-checkpoint "
            f"({', '.join(cands)}): priors are fitted for one checkpoint"
        )
