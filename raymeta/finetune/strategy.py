"""Strategies: how a population for a new task is started and searched, the same in ``raymeta
tune`` and in sweeps.

A strategy is ``INIT+PRIOR+SCHEDULER``:

* INIT: ``meta`` (every member starts at the meta-checkpoint's weights) or ``scratch`` (each
  member at its own seeded random init);
* PRIOR, where member configs come from: ``learned`` (the checkpoint's fitted priors: the
  portfolio first, then samples of the learned prior), ``broad`` (samples of the broad space
  over the checkpoint's candidates, the task's train split and the run's steps per member), or
  ``fixed-default`` (one member with the fixed default fine-tune: SGD at the meta-training
  inner learning rate, whole train split, all layers; written ``INIT+fixed-default``);
* SCHEDULER: ``pbt`` (exploit/explore within the prior), ``random`` (independent members,
  best by val), and in ``raymeta tune`` also ``pb2`` and ``asha`` (Ray Tune's schedulers).
  Sweeps run their populations in-process, with ``pbt`` or ``random``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymeta.errors import ConfigError

if TYPE_CHECKING:  # torch-free at import: the CLI's --help reads the names below
    import numpy as np

    from raymeta.core.checkpoint import MetaCheckpoint
    from raymeta.priors import Prior

INITS = ("meta", "scratch")
PRIORS = ("learned", "broad", "fixed-default")
SCHEDULERS = ("pbt", "pb2", "asha", "random")
IN_PROCESS_SCHEDULERS = ("pbt", "random")  # what a sweep's in-process population can run


@dataclass(frozen=True)
class Strategy:
    init: str = "meta"
    prior: str = "learned"
    scheduler: str = "pbt"

    def __post_init__(self) -> None:
        for what, value, choices in (
            ("INIT", self.init, INITS),
            ("PRIOR", self.prior, PRIORS),
            ("SCHEDULER", self.scheduler, SCHEDULERS),
        ):
            if value not in choices:
                raise ConfigError(
                    f"unknown strategy {self.name!r}: {what} must be one of {', '.join(choices)}"
                )

    @classmethod
    def parse(cls, name: str) -> Strategy:
        """``INIT+PRIOR+SCHEDULER`` or ``INIT+fixed-default`` (module docstring)."""
        parts = str(name).split("+")
        if len(parts) == 2 and parts[1] == "fixed-default":
            parts.append("random")
        if (
            len(parts) != 3
            or parts[0] not in INITS
            or parts[1] not in PRIORS
            or parts[2] not in SCHEDULERS
        ):
            raise ConfigError(
                f"unknown strategy {str(name)[:80]!r} (use INIT+PRIOR+SCHEDULER with INIT in "
                f"{INITS}, PRIOR in {PRIORS[:2]}, SCHEDULER in {SCHEDULERS}, or INIT+fixed-default)"
            )
        return cls(*parts)

    @property
    def name(self) -> str:
        if self.prior == "fixed-default":
            return f"{self.init}+fixed-default"
        return f"{self.init}+{self.prior}+{self.scheduler}"

    @property
    def fixed(self) -> bool:
        """One member with the fixed default config (no search, no scheduler)."""
        return self.prior == "fixed-default"


def strategy_prior(
    ckpt: MetaCheckpoint, strategy: Strategy, n_train: int, steps: int
) -> tuple[Prior, list[dict[str, Any]]]:
    """The prior members are drawn from and explore within, and the portfolio to try first
    (learned priors only). A checkpoint without fitted priors is a clear error for
    ``learned``."""
    from raymeta.finetune.hparams import broad_space
    from raymeta.priors import broad_prior, load_priors

    if strategy.prior == "learned":
        priors = load_priors(ckpt)
        return priors.learned, [dict(c) for c in priors.portfolio]
    return broad_prior(broad_space(list(ckpt.candidates), max_batch=n_train, max_steps=steps)), []


def fixed_default(ckpt: MetaCheckpoint, n_train: int, steps: int) -> dict[str, Any]:
    """The fixed default fine-tune of the checkpoint's first candidate for ``steps`` steps."""
    from raymeta.finetune.hparams import default_config

    cand = ckpt.candidate()
    return default_config(float(cand.info.get("inner_lr", 0.01)), steps, n_train, cand.name)


def member_configs(
    strategy: Strategy,
    n: int,
    prior: Prior,
    portfolio: Sequence[dict[str, Any]],
    rng: np.random.Generator,
    fixed: dict[str, Any],
) -> list[dict[str, Any]]:
    """The first configs of ``n`` members: the fixed default alone, or (learned) the portfolio
    first and then samples of ``prior`` drawn with ``rng``."""
    if strategy.fixed:
        return [dict(fixed)]
    head = [dict(c) for c in portfolio[:n]] if strategy.prior == "learned" else []
    return head + prior.sample(n - len(head), rng)
