"""The fine-tuning hyperparameter vocabulary, declared once.

Every hyperparameter a fine-tuning member has is one ``HParam`` in ``HPARAMS``: its type and
default, its range in the broad search space, how a population member reads it (one tensor
entry per member, ``member_tensors``), whether PBT may change it in the middle of a run, and
its column in Ray Tune's progress table. Everything else reads this table: the broad space
(``broad_space``), config validation (``FinetuneConfig``), the per-member tensors of the step
function, the Tune param space, mutations and progress columns, the trial history, the
hyperparameters written into result rows (``row_hparams``) and the looped reference. Adding a
hyperparameter is one entry here plus its use in the step function (``step.py``) and the
reference (``reference.py``), and its column type in the results' ``hparams`` struct
(``raymeta.results.schema.HPARAM_TYPES``, which bumps the results schema version).

=============  ===========  ==========================  =========================================
name           type         broad range                 notes
=============  ===========  ==========================  =========================================
lr             float, log   [1e-4, 1.0]                 default 0.01
optimizer      categorical  sgd, adam                   default sgd
weight_decay   float, log   [1e-6, 1e-1]                default 0; the space's floor 1e-6 is "none"
steps          int, log     [1, max_steps]              a config's own fine-tuning length; runs
                                                        with a budget (tune, sweeps) override it
batch_size     int, log     [1, max_batch]              default and cap: the task's train split
adapt          categorical  all, head                   head = only ``head.*`` parameters move
model          categorical  the checkpoint's candidates members of one model train together
=============  ===========  ==========================  =========================================

The order of ``HPARAMS`` is the order of the broad space, which fixes how a prior's samples
consume randomness: append new hyperparameters at the end of the trained ones.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from raymeta import checks
from raymeta.errors import ConfigError
from raymeta.priors.space import Categorical, Float, Int, Param, SearchSpace

OPTIMIZERS = ("sgd", "adam")
ADAPT = ("all", "head")
WEIGHT_DECAY_FLOOR = 1e-6  # the broad space's "no decay" (a log scale cannot hold 0)
UNLIMITED = 2**62  # a member's step limit when nothing limits it


@dataclass(frozen=True)
class Bounds:
    """What the broad space depends on: the model candidates, the task's train-split size
    (largest minibatch) and the longest fine-tuning run (largest ``steps``)."""

    candidates: tuple[str, ...]
    max_batch: int
    max_steps: int = 100


def _log_int(name: str, high: int) -> Param:
    return Int(name, 1, high, log=True) if high > 1 else Categorical(name, (1,))


@dataclass(frozen=True)
class HParam:
    """One fine-tuning hyperparameter (see the module docstring for the table).

    ``kind`` is ``float`` (finite, > 0 for ``lr``, >= 0 otherwise), ``int`` (>= 1), ``choice``
    (one of ``choices``) or ``name`` (a model candidate). ``default`` is used where a config
    leaves the key out (None: set by the run, e.g. the whole train split for ``batch_size``).
    ``encode(value, n_train)`` gives the member-tensor entry (None: not a per-member tensor,
    ``model`` selects the population instead)."""

    name: str
    kind: str
    default: Any
    broad: Callable[[Bounds], Param]
    encode: Callable[[Any, int], float | int] | None
    dtype: torch.dtype = torch.float64
    choices: tuple[str, ...] = ()
    positive: bool = False
    mutable: bool = True  # PBT / PB2 / in-trial exploits may change it mid-run
    column: str | None = None  # short title in Ray Tune's progress table

    def check(self, value: Any) -> Any:
        """``value`` if it is a valid value of this hyperparameter, else a one-line error."""
        bad = f"fine-tuning config: {self.name}={value!r}"
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{bad} is not one of {', '.join(self.choices)}")
            return value
        if self.kind == "name":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{bad} must be a model candidate's name")
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))
        ):
            raise ConfigError(f"{bad} must be a finite number")
        if self.kind == "int":
            whole = float(value).is_integer() if not isinstance(value, numbers.Integral) else True
            # a member's tensor entry is an int64: steps=1e300 was accepted, then overflowed it
            if not whole or float(value) < 1 or float(value) > UNLIMITED:
                raise ConfigError(f"{bad} must be an integer in 1..2**62")
            return int(float(value)) if not isinstance(value, numbers.Integral) else int(value)
        value = float(value)
        if value < 0 or (self.positive and value == 0):
            raise ConfigError(f"{bad} must be {'> 0' if self.positive else '>= 0'}")
        return value


def _index(choices: tuple[str, ...]) -> Callable[[Any, int], int]:
    return lambda v, _n: choices.index(v)


HPARAMS: tuple[HParam, ...] = (
    HParam(
        "lr",
        "float",
        0.01,
        lambda b: Float("lr", 1e-4, 1.0, log=True),
        lambda v, _n: float(v),
        positive=True,
        column="lr",
    ),
    HParam(
        "optimizer",
        "choice",
        "sgd",
        lambda b: Categorical("optimizer", OPTIMIZERS),
        _index(OPTIMIZERS),
        torch.int64,
        OPTIMIZERS,
        column="opt",
    ),
    HParam(
        "weight_decay",
        "float",
        0.0,
        lambda b: Float("weight_decay", WEIGHT_DECAY_FLOOR, 1e-1, log=True),
        lambda v, _n: float(v),
    ),
    HParam(
        "steps",
        "int",
        None,
        lambda b: _log_int("steps", b.max_steps),
        lambda v, _n: UNLIMITED if v is None else int(v),
        torch.int64,
        mutable=False,
    ),
    HParam(
        "batch_size",
        "int",
        None,
        lambda b: _log_int("batch_size", b.max_batch),
        lambda v, n: n if v is None else min(int(v), n),
        torch.int64,
    ),
    HParam(
        "adapt",
        "choice",
        "all",
        lambda b: Categorical("adapt", ADAPT),
        _index(ADAPT),
        torch.int64,
        ADAPT,
        column="adapt",
    ),
    HParam(
        "model",
        "name",
        None,
        lambda b: Categorical("model", tuple(str(c) for c in b.candidates)),
        None,
        mutable=False,
    ),
)


def hparams() -> tuple[HParam, ...]:
    """The vocabulary (read at call time, so every consumer sees the same table)."""
    return HPARAMS


def names() -> list[str]:
    return [h.name for h in hparams()]


def fixed_names() -> list[str]:
    """Hyperparameters a run never changes mid-run (PBT would invalidate a member's state)."""
    return [h.name for h in hparams() if not h.mutable]


def tune_columns() -> dict[str, str]:
    """Ray Tune progress-table columns: config key -> short title."""
    return {h.name: h.column for h in hparams() if h.column}


def broad_space(candidates: Sequence[str], max_batch: int, max_steps: int = 100) -> SearchSpace:
    """The broad default search space (the module docstring's table).

    ``candidates`` are model candidates' names (a list; a lone string was read letter by letter,
    ``"mlp"`` as candidates m, l, p), ``max_batch`` and ``max_steps`` integers >= 1 (NaN was a
    ValueError, ``"10"`` a TypeError, 5.5 truncated to 5 without a word)."""
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not candidates:
        raise ConfigError(
            "search space: candidates must be a non-empty list of model candidate names, got "
            + checks.show_value(candidates)
        )
    for c in candidates:
        if not isinstance(c, str) or not c:
            raise ConfigError(f"search space: a model candidate name must be a string, got {c!r}")
    for name, v in (("max_batch", max_batch), ("max_steps", max_steps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ConfigError(f"search space: {name} must be an integer >= 1, got {v!r}")
    bounds = Bounds(tuple(candidates), int(max_batch), int(max_steps))
    return SearchSpace([h.broad(bounds) for h in hparams()])


class FinetuneConfig(Mapping[str, Any]):
    """One member's fine-tuning configuration: every vocabulary key, validated.

    Configs travel as plain dicts (prior samples, portfolios in ``priors.json``, Ray Tune
    trial configs, result rows); this is their typed, checked form. Keys the config leaves
    out take the vocabulary's default; keys outside the vocabulary are refused. Values are
    checked once here (type, choices, finiteness, range), so the step function, the looped
    reference and the rows read known-good values::

        FinetuneConfig(lr=3e-3, optimizer="adam")["batch_size"]   # None: the whole train split
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        if values is not None and not isinstance(values, Mapping):  # was a bare TypeError
            raise ConfigError(
                "fine-tuning config: give a mapping of hyperparameter: value (or keywords), got "
                + checks.show_value(values)
            )
        given = {**(values or {}), **kw}
        vocab = {h.name: h for h in hparams()}
        unknown = sorted(set(given) - set(vocab))
        if unknown:
            raise ConfigError(
                f"fine-tuning config: unknown hyperparameter(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(vocab)})"
            )
        out: dict[str, Any] = {}
        for name, h in vocab.items():
            v = given.get(name, h.default)
            out[name] = None if v is None else h.check(v)
        self._values = out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        """The vocabulary's keys of ``d`` (other keys, such as Ray Tune's, are ignored)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"fine-tuning config: expected a mapping, got {checks.show_value(d)}")
        known = set(names())
        return cls({k: v for k, v in d.items() if k in known})

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"FinetuneConfig({self._values!r})"

    def to_dict(self) -> dict[str, Any]:
        """The set values (defaults that depend on the run, such as ``batch_size``, left out)."""
        return {k: v for k, v in self._values.items() if v is not None}


def member_tensors(
    configs: Sequence[Mapping[str, Any]], n_train: int, horizon: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-member hyperparameter tensors (name -> one entry per member) of ``configs``, each
    config checked as ``FinetuneConfig.from_dict`` checks it.

    ``horizon`` (a population run's budget) replaces every member's own ``steps``: a member of
    a ``raymeta tune`` run or a sweep trains the run's budget, whatever fine-tuning length the
    priors describe for its config.

    Populations rebuild these for thousands of members (every new config of a PBT exploit), so
    each column is checked at once where its values are plain (``float`` / ``int`` / a choice
    / a name, in range); a column with anything else goes through ``FinetuneConfig``, whose
    conversions and errors are the reference (``checked_member_tensors``)."""
    cols: dict[str, list[Any]] = {}
    for h in hparams():
        vals = [c.get(h.name, h.default) for c in configs]
        if not _plain(h, vals):
            return checked_member_tensors(configs, n_train, horizon)
        cols[h.name] = vals
    return _encode(cols, len(configs), n_train, horizon)


def checked_member_tensors(
    configs: Sequence[Mapping[str, Any]], n_train: int, horizon: int | None = None
) -> dict[str, torch.Tensor]:
    """``member_tensors`` through one ``FinetuneConfig`` per member (the reference)."""
    cfgs = [FinetuneConfig.from_dict(c) for c in configs]
    return _encode(
        {h.name: [c[h.name] for c in cfgs] for h in hparams()}, len(cfgs), n_train, horizon
    )


def _encode(
    cols: Mapping[str, list[Any]], n: int, n_train: int, horizon: int | None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for h in hparams():
        if h.encode is None:
            continue
        vals = [horizon] * n if h.name == "steps" and horizon is not None else cols[h.name]
        out[h.name] = torch.tensor([h.encode(v, n_train) for v in vals], dtype=h.dtype)
    return out


def _plain(h: HParam, vals: list[Any]) -> bool:
    """Whether ``HParam.check`` would return every value of ``vals`` unchanged (None stands
    for a default only where the vocabulary's default is None)."""
    if h.kind == "choice":
        return all(v in h.choices and type(v) is str for v in vals)
    if h.kind == "name":
        return all((type(v) is str and v != "") or v is None for v in vals)
    if h.kind == "int":
        ok = all(type(v) is int and 1 <= v <= UNLIMITED for v in vals if v is not None)
        return ok and (h.default is None or None not in vals)
    # floats only (an int passes the check converted); > 0 is >= the least float above 0
    low = math.ulp(0.0) if h.positive else 0.0
    return all(type(v) is float and low <= v < math.inf for v in vals)


def row_hparams(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The vocabulary's keys of ``config``, as written into result rows and trial histories."""
    if config is None:
        return None
    return {k: config[k] for k in names() if k in config}


def default_config(lr: float, steps: int, n_train: int, model: str) -> dict[str, Any]:
    """The fixed default fine-tune (MAML's protocol): the vocabulary's defaults with SGD at the
    meta-training inner learning rate ``lr``, the whole train split, for ``steps`` steps."""
    return FinetuneConfig(lr=lr, steps=steps, batch_size=n_train, model=model).to_dict()
