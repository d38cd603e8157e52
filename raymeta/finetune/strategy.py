"""Strategies: how a population for a new task is started and searched, the same in ``raymeta
tune`` and in sweeps.

A strategy is ``INIT+PRIOR+SCHEDULER``:

* INIT: ``meta`` (every member starts at the meta-checkpoint's weights) or ``scratch`` (each
  member at its own seeded random init);
* PRIOR, where member configs come from: ``learned`` (the checkpoint's fitted priors: the
  portfolio first, then samples of the learned prior), ``broad`` (samples of the broad space
  over the checkpoint's candidates, the task's train split and the run's steps per member), or
  ``fixed-default`` (one member with the fixed default fine-tune: SGD at the meta-training
  inner learning rate, whole train split, all layers; written ``INIT+fixed-default``), or
  ``fixed-head`` (the same fine-tune of the head only: a linear probe, with a pretrained
  candidate the "pretrain, then linear probe" baseline; written ``INIT+fixed-head``);
* SCHEDULER: ``pbt`` (exploit/explore within the prior), ``random`` (independent members,
  best by val), and in ``raymeta tune`` also ``pb2`` and ``asha`` (Ray Tune's schedulers).
  Sweeps run their populations in-process, with ``pbt`` or ``random``. Only the searched
  priors (``learned``, ``broad``) take a scheduler: a fixed prior is one member on its own, so
  it runs unscheduled (``random``, which ``INIT+fixed-default+random`` may spell out: how
  ``raymeta tune`` labelled such runs before labels lost the part) and ``pbt``, ``pb2`` or
  ``asha`` with it are refused, never silently dropped;
* an optional fourth part, the final pick (``raymeta.finetune.picks``): ``best`` (the default,
  left out of the name), ``refit`` or ``soup``, e.g. ``meta+learned+pbt+refit`` or
  ``meta+fixed-default+refit``.

``auto`` is the strategy ``raymeta priors fit`` chose for the checkpoint's family from meta-val
evidence (``raymeta.finetune.select``), resolved per checkpoint by ``resolve_auto``; it is the
default of ``raymeta tune``.

Reading a strategy: what a user writes (``raymeta tune --strategy``, ``--init/--prior/
--scheduler``, a sweep's ``strategies:``, ``TuneRequest``, ``Strategy(...)``) goes through
``Strategy.parse`` or the constructor, which refuse a part the run would ignore. Labels raymeta
wrote itself (result rows, ``report.json``, ``priors.json``'s chosen strategy) are read with
``Strategy.from_label``, which also takes the older tune labels that named a scheduler for a
fixed prior (``meta+fixed-head+pbt``): refusing raymeta's own records would strand them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymeta.errors import ConfigError

if TYPE_CHECKING:  # torch-free at import: the CLI's --help reads the names below
    import numpy as np

    from raymeta.core.checkpoint import MetaCheckpoint
    from raymeta.priors import Prior, Priors

INITS = ("meta", "scratch")
PRIORS = ("learned", "broad", "fixed-default", "fixed-head")
FIXED_PRIORS = PRIORS[2:]  # one member with a fixed config: no search, no scheduler
SCHEDULERS = ("pbt", "pb2", "asha", "random")
IN_PROCESS_SCHEDULERS = ("pbt", "random")  # what a sweep's in-process population can run
PICKS = ("best", "refit", "soup")  # ``raymeta.finetune.picks`` (torch-free names here)
AUTO = "auto"


# the one scheduler a fixed prior runs with: its single member on its own, nothing to schedule
FIXED_SCHEDULER = "random"
# which combinations take a scheduler, for the refusals' messages
TAKES_SCHEDULER = (
    "a scheduler goes with a searched prior only (INIT+learned+SCHEDULER, INIT+broad+SCHEDULER); "
    "a fixed prior is one member with no search (INIT+fixed-default[+PICK], "
    "INIT+fixed-head[+PICK])"
)


@dataclass(frozen=True)
class Strategy:
    """One strategy (module docstring). ``scheduler`` left out is the prior's own: ``pbt`` for
    a searched prior, ``random`` for a fixed one; a fixed prior with any other scheduler is a
    ``ConfigError`` (the run would ignore it)."""

    init: str = "meta"
    prior: str = "learned"
    scheduler: str = ""  # "": the prior's default (set in __post_init__)
    pick: str = "best"

    def __post_init__(self) -> None:
        if self.scheduler == "":
            default = FIXED_SCHEDULER if self.prior in FIXED_PRIORS else "pbt"
            object.__setattr__(self, "scheduler", default)
        for what, value, choices in (
            ("INIT", self.init, INITS),
            ("PRIOR", self.prior, PRIORS),
            ("SCHEDULER", self.scheduler, SCHEDULERS),
            ("PICK", self.pick, PICKS),
        ):
            if value not in choices:
                raise ConfigError(
                    f"unknown strategy {self.name!r}: {what} must be one of {', '.join(choices)}"
                )
        if self.fixed and self.scheduler != FIXED_SCHEDULER:
            raise ConfigError(
                f"strategy {self.init}+{self.prior} takes no scheduler, got {self.scheduler!r}; "
                f"{TAKES_SCHEDULER}"
            )

    @classmethod
    def parse(cls, name: str) -> Strategy:
        """A strategy a user wrote: ``INIT+PRIOR+SCHEDULER[+PICK]`` or ``INIT+fixed-default
        [+PICK]`` / ``INIT+fixed-head[+PICK]`` (module docstring; ``auto`` is resolved per
        checkpoint by ``resolve_auto``).

        A fixed prior with ``pbt``, ``pb2`` or ``asha`` is refused, with a line saying which
        combinations take a scheduler: ``meta+fixed-default+pbt`` used to run as
        ``meta+fixed-default``, the scheduler silently dropped. ``INIT+fixed-X+random`` is
        accepted: ``random`` is how a fixed prior runs, and ``raymeta tune`` wrote that label."""
        return cls._read(name, strict=True)

    @classmethod
    def from_label(cls, label: str) -> Strategy:
        """A strategy label raymeta wrote itself (a result row's ``strategy``, ``report.json``,
        ``priors.json``'s chosen strategy): as ``parse``, and also the labels ``raymeta tune``
        wrote before fixed-prior labels lost their scheduler (``meta+fixed-head+pbt``), read as
        the fixed strategy they ran."""
        return cls._read(label, strict=False)

    @classmethod
    def _read(cls, name: str, strict: bool) -> Strategy:
        parts = str(name).split("+")
        pick = "best"
        if (
            len(parts) in (3, 4)
            and parts[-1] in PICKS
            and (len(parts) == 4 or parts[1] in FIXED_PRIORS)
        ):
            pick = parts.pop()
        if len(parts) == 2 and parts[1] in FIXED_PRIORS:
            parts.append(FIXED_SCHEDULER)
        if (
            len(parts) != 3
            or parts[0] not in INITS
            or parts[1] not in PRIORS
            or parts[2] not in SCHEDULERS
        ):
            raise ConfigError(
                f"unknown strategy {str(name)[:80]!r} (use auto, INIT+PRIOR+SCHEDULER[+PICK] with "
                f"INIT in {INITS}, PRIOR in {PRIORS[:2]}, SCHEDULER in {SCHEDULERS}, PICK in "
                f"{PICKS}, or INIT+fixed-default[+PICK] / INIT+fixed-head[+PICK])"
            )
        if parts[1] in FIXED_PRIORS and parts[2] != FIXED_SCHEDULER:
            if strict:
                tail = "" if pick == "best" else f"+{pick}"
                raise ConfigError(
                    f"strategy {str(name)[:80]!r}: {parts[1]} takes no scheduler, {parts[2]} "
                    f"would be ignored (write {parts[0]}+{parts[1]}{tail}); {TAKES_SCHEDULER}"
                )
            parts[2] = FIXED_SCHEDULER
        return cls(parts[0], parts[1], parts[2], pick)

    @property
    def name(self) -> str:
        tail = "" if self.pick == "best" else f"+{self.pick}"
        if self.fixed:
            return f"{self.init}+{self.prior}{tail}"
        return f"{self.init}+{self.prior}+{self.scheduler}{tail}"

    @property
    def fixed(self) -> bool:
        """One member with a fixed config (no search, no scheduler)."""
        return self.prior in FIXED_PRIORS


def strategy_prior(
    ckpt: MetaCheckpoint,
    strategy: Strategy,
    n_train: int,
    steps: int,
    priors: Priors | None = None,
) -> tuple[Prior, list[dict[str, Any]]]:
    """The prior members are drawn from and explore within, and the portfolio to try first
    (learned priors only: ``priors``, else the checkpoint's). A checkpoint without fitted
    priors is a clear error for ``learned``."""
    from raymeta.priors import load_priors

    if strategy.prior == "learned":
        priors = priors if priors is not None else load_priors(ckpt)
        return priors.learned, [dict(c) for c in priors.portfolio]
    return broad(tuple(ckpt.candidates), n_train, steps), []


@functools.lru_cache(maxsize=64)
def broad(candidates: tuple[str, ...], n_train: int, steps: int) -> Prior:
    """The broad prior over ``candidates``, a train split of ``n_train`` and ``steps`` steps.
    One object per bounds (priors are not changed after construction): a sweep batch's
    hundreds of units share it, and with it one compiled explore step
    (``Prior.perturb_plan``) and one batched ``perturb_many`` per evaluation."""
    from raymeta.finetune.hparams import broad_space
    from raymeta.priors import broad_prior

    return broad_prior(broad_space(list(candidates), max_batch=n_train, max_steps=steps))


def fixed_default(
    ckpt: MetaCheckpoint, n_train: int, steps: int, candidate: str | None = None
) -> dict[str, Any]:
    """The fixed default fine-tune of ``candidate`` for ``steps`` steps; by default of the
    candidate strategy selection found best for it (``default_candidate``), else the first."""
    from raymeta.finetune.hparams import default_config

    cand = ckpt.candidate(candidate if candidate is not None else default_candidate(ckpt))
    return default_config(float(cand.info.get("inner_lr", 0.01)), steps, n_train, cand.name)


def default_candidate(ckpt: MetaCheckpoint) -> str | None:
    """The candidate whose fixed default fine-tune did best on meta-val (``priors fit``'s
    strategy selection), or None (the checkpoint's first) without that evidence."""
    sel = _selection(ckpt)
    name = sel.get("default_candidate") if sel else None
    return str(name) if name in ckpt.candidates else None


def _selection(ckpt: MetaCheckpoint) -> dict[str, Any] | None:
    """The checkpoint's strategy-selection record, as ``load_priors`` checked it."""
    from raymeta.priors import load_priors

    return load_priors(ckpt).selection if ckpt.priors is not None else None


def resolve_auto(ckpt: MetaCheckpoint) -> tuple[Strategy, str]:
    """``auto`` for this checkpoint: the strategy ``priors fit`` chose from meta-val evidence,
    and one line saying why. Without that evidence: ``meta+learned+pbt`` with priors fitted
    before strategy selection existed, ``meta+broad+pbt`` without priors."""
    if ckpt.priors is None:
        return Strategy("meta", "broad", "pbt"), (
            "the meta-checkpoint has no priors.json, so no meta-val evidence to choose from "
            "(run 'raymeta priors fit' to choose by measurement)"
        )
    sel = _selection(ckpt)
    if sel is None:
        return Strategy(), (
            "its priors.json was fitted before strategy selection existed "
            "(refit with 'raymeta priors fit' to choose by measurement)"
        )
    return Strategy.from_label(str(sel["chosen"])), str(sel.get("why", "chosen on meta-val tasks"))


def member_configs(
    strategy: Strategy,
    n: int,
    prior: Prior,
    portfolio: Sequence[dict[str, Any]],
    rng: np.random.Generator,
    fixed: dict[str, Any],
) -> list[dict[str, Any]]:
    """The first configs of ``n`` members: the fixed default alone (of the head only for
    ``fixed-head``), or (learned) the portfolio first and then samples of ``prior`` drawn
    with ``rng``."""
    if strategy.fixed:
        return [dict(fixed, adapt="head") if strategy.prior == "fixed-head" else dict(fixed)]
    head = [dict(c) for c in portfolio[:n]] if strategy.prior == "learned" else []
    return head + prior.sample(n - len(head), rng)
