"""``priors.json``: the versioned artifact ``raymeta priors fit`` adds to a meta-checkpoint.

It holds the search space, the learned prior, the greedy portfolio (configs to evaluate first,
best first), model-selection probabilities, fitting diagnostics (``info``) and, from version 3,
the strategy selection (``selection``: every strategy x final pick scored on meta-val tasks'
test splits, the chosen one that ``auto`` runs, and why; ``raymeta.finetune.select``). The file is
checksummed with the rest of the checkpoint (``raymeta.core.checkpoint.write_priors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raymeta.checks import show_value
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.errors import CheckpointError, ConfigError
from raymeta.priors.prior import Prior, broad_prior
from raymeta.priors.space import SearchSpace

FORMAT = "raymeta-priors"
VERSION = 3  # 2 added the learned prior's joint component, 3 the strategy selection
READABLE = (1, 2, 3)
WHICH = ("learned", "broad")


@dataclass
class Priors:
    version: int
    space: SearchSpace
    learned: Prior
    portfolio: list[dict[str, Any]]
    model_probs: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def prior(self, which: str) -> Prior:
        """The prior a tuner samples from: ``learned`` (fitted) or ``broad`` (uniform baseline)."""
        if which == "learned":
            return self.learned
        if which == "broad":
            return broad_prior(self.space)
        raise ConfigError(f"unknown prior {which!r} (choose {' or '.join(WHICH)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "space": self.space.to_dict(),
            "learned": self.learned.to_dict(),
            "portfolio": [dict(c) for c in self.portfolio],
            "model_probs": dict(self.model_probs),
            "info": dict(self.info),
        } | ({"selection": dict(self.selection)} if self.selection is not None else {})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Priors:
        """Parse ``priors.json``; an unknown version or malformed content is a ``CheckpointError``."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise CheckpointError("priors.json is not a raymeta priors file")
        if d.get("version") not in READABLE:
            raise CheckpointError(
                f"priors.json has version {d.get('version')!r}, this raymeta reads versions"
                f" {', '.join(map(str, READABLE))}"
            )
        try:
            space = SearchSpace.from_dict(d["space"])
            learned = Prior.from_dict(d["learned"])
            if learned.space != space:
                raise ConfigError("the learned prior's space differs from the file's space")
            portfolio = [
                space.validate(c) | {k: v for k, v in c.items() if k not in space}
                for c in d["portfolio"]
            ]
            selection = d.get("selection")
            if selection is not None and not (
                isinstance(selection, Mapping) and isinstance(selection.get("chosen"), str)
            ):
                raise ConfigError("its strategy selection has no chosen strategy")
            for key in ("model_probs", "info"):  # ``priors show`` reads both as mappings
                if not isinstance(d.get(key, {}), Mapping):
                    raise ConfigError(f"its {key!r} is not a mapping")
            return cls(
                version=int(d["version"]),
                space=space,
                learned=learned,
                portfolio=portfolio,
                model_probs={str(k): float(v) for k, v in d["model_probs"].items()},
                info=dict(d.get("info", {})),
                selection=dict(selection) if selection is not None else None,
            )
        except KeyError as exc:
            raise CheckpointError(f"priors.json is malformed: it has no {exc} entry") from None
        except (TypeError, ValueError, AttributeError, ConfigError) as exc:
            # ValueError: a model probability float() cannot read (was a bare ValueError)
            raise CheckpointError(f"priors.json is malformed: {exc}") from None


def load_priors(ckpt: MetaCheckpoint) -> Priors:
    """The checkpoint's fitted priors; a checkpoint without them is a ``CheckpointError``."""
    if not isinstance(ckpt, MetaCheckpoint):  # a path given here was an AttributeError
        raise ConfigError(
            "load_priors takes a MetaCheckpoint (raymeta.load_meta_checkpoint(path)), got "
            + show_value(ckpt)
        )
    if ckpt.priors is None:
        where = f" {ckpt.path}" if ckpt.path is not None else ""
        raise CheckpointError(
            f"meta-checkpoint{where} has no priors.json (run 'raymeta priors fit --meta DIR' first)"
        )
    return Priors.from_dict(ckpt.priors)
