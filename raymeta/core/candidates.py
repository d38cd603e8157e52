"""Model candidates: what one meta-checkpoint offers model selection to choose from.

A meta-checkpoint holds one or more named candidates; ``raymeta priors fit`` learns a
probability for each from the family's meta-validation tasks, and a tune population or a
sweep lets members start from any of them. A candidate is one of:

* **meta-learned**: a model (built-in, plugin or import path) meta-trained with an algorithm
  (MAML, FOMAML, Reptile, Meta-SGD, ANIL). Two candidates may share a model and differ in
  algorithm or inner-loop settings, or share an algorithm and differ in model or width.
* **pretrained** (``algo=pretrain``): the same model trained by plain supervised learning, the
  "pretrain, then fine-tune" baseline of few-shot learning, no inner loop. On a family with
  global classes (digits, Omniglot) it is one C-way classifier over all meta-train classes,
  stored with a fresh zero N-way head ("A Closer Look at Few-shot Classification"); elsewhere
  the shared weights' loss on each meta-train task's support and query rows (``core.pretrain``;
  the candidate's info records which ran, ``info["pretrain"]["formulation"]``).
* **pretrained from a file** (``weights=PATH``): the user's own weights for the model, read
  with ``torch.load(weights_only=True)`` (tensors only, never a pickled object) and checked
  name by name and shape by shape against the model before anything runs.

A candidate states only what differs from the run: unset fields take the run's ``--model``,
``--algo``, ``--inner-steps``, ... A candidate that names its own model does not inherit the
run's ``--model-option`` values (they were meant for the run's model).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from raymeta import checks
from raymeta.errors import ConfigError
from raymeta.plugins import canonical, check_label

FIELDS = ("model", "model_options", "algo", "inner_steps", "inner_lr", "first_order", "weights")
PRETRAIN = "pretrain"


@dataclass
class CandidateConfig:
    """One candidate of a meta-training run (``None`` = the run's value)."""

    name: str
    model: str | Callable[..., Any] | None = None
    model_options: dict[str, Any] | None = None
    algo: str | None = None
    inner_steps: int | None = None
    inner_lr: float | None = None
    first_order: bool | None = None
    weights: str | None = None
    weights_sha256: str | None = None  # filled in by validate
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> CandidateConfig:
        """Types and ranges (one-line ``ConfigError``s); the model is stored by the name a Ray
        worker can import, a weights file by its absolute path."""
        what = f"candidate {self.name!r}"
        check_label("candidate name", self.name)
        if self.extra:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(sorted(self.extra))} (valid: {', '.join(FIELDS)})"
            )
        if self.model is not None:
            self.model = canonical("model", self.model)
        if self.model_options is not None:
            checks.plain_data(
                f"{what} model options", checks.mapping(f"{what} model options", self.model_options)
            )
        if self.algo is not None:
            from raymeta.core.engine import check_algorithm

            checks.string(f"{what} algo", self.algo)
            if self.algo != PRETRAIN:
                check_algorithm(self.algo)
        if self.inner_steps is not None:
            checks.integer(f"{what} inner_steps", self.inner_steps, 0, 100_000)
        if self.inner_lr is not None:
            checks.number(f"{what} inner_lr", self.inner_lr, 0.0, low_open=True)
        if self.first_order is not None:
            checks.boolean(f"{what} first_order", self.first_order)
        if self.weights is not None:
            checks.string(f"{what} weights", self.weights)
            try:
                p = Path(self.weights).expanduser()
                found, folder = p.is_file(), p.is_dir()
            except (RuntimeError, OSError, ValueError):  # ~nosuchuser, a NUL, a long name
                found = folder = False
            if folder:
                raise ConfigError(
                    f"{what}: weights {self.weights!r} is a directory, not a weights file "
                    "(a torch state dict saved with torch.save)"
                )
            if not found:
                raise ConfigError(f"{what}: weights file {self.weights!r} does not exist")
            self.weights = str(p.absolute())
            # the file's digest is part of the run's config: a replaced file is a new run
            self.weights_sha256 = file_sha256(self.weights)
            if self.algo is not None:
                raise ConfigError(
                    f"{what}: a candidate with weights= is not trained, so algo= does not apply"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        for k in (*FIELDS, "weights_sha256"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v if k != "model" or isinstance(v, str) else canonical("model", v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CandidateConfig:
        d = checks.mapping("candidate", d)
        name = d.get("name")
        known = {f.name for f in fields(cls)} - {"extra", "name"}
        extra = {k: v for k, v in d.items() if k not in known and k != "name"}
        return cls(
            name=name,  # type: ignore[arg-type]  # checked in validate
            extra=extra,
            **{k: v for k, v in d.items() if k in known},
        )

    @classmethod
    def parse(cls, text: str) -> CandidateConfig:
        """The CLI form ``"NAME KEY=VALUE ..."``: keys in ``FIELDS`` set the candidate's own
        fields, any other key is an option of its model (``"wide model=mlp widths=[80,80]"``)."""
        from raymeta.options import parse_options

        if not isinstance(text, str):
            raise ConfigError(f"--candidate expects 'NAME KEY=VALUE ...', got {text!r}")
        try:
            tokens = shlex.split(text)
        except ValueError as exc:
            raise ConfigError(f"--candidate {text!r}: {exc}") from None
        if not tokens or "=" in tokens[0]:
            raise ConfigError(
                f"--candidate expects a name first, then KEY=VALUE pairs, got {text!r}"
            )
        opts = parse_options(tokens[1:], "candidate", flag=f"--candidate {tokens[0]}")
        own = {k: opts.pop(k) for k in list(opts) if k in FIELDS}
        if opts:
            model_options = dict(
                checks.mapping("--candidate model_options", own.get("model_options") or {})
            )
            model_options.update(opts)
            own["model_options"] = model_options
        return cls.from_dict({"name": tokens[0], **own})


def as_candidate(c: CandidateConfig | Mapping[str, Any] | str) -> CandidateConfig:
    """A candidate from the API (object or dict), a config file (dict) or the CLI (string)."""
    if isinstance(c, CandidateConfig):
        return c
    if isinstance(c, str):
        return CandidateConfig.parse(c)
    return CandidateConfig.from_dict(c)


def check_candidates(cands: list[CandidateConfig]) -> None:
    """Candidate names are unique (they name weights files and the ``model`` hyperparameter)."""
    seen: set[str] = set()
    for c in cands:
        if c.name in seen:
            raise ConfigError(f"two candidates are named {c.name!r}")
        seen.add(c.name)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained(cand: CandidateConfig, spec: Any) -> Any:
    """The ``Candidate`` of a user's weights file for model ``spec``: tensors only
    (``weights_only=True``), exactly the model's parameter names and shapes."""
    from raymeta.core.checkpoint import Candidate, check_weights, load_weights
    from raymeta.core.models import expected_shapes

    assert cand.weights is not None
    params = load_weights(Path(cand.weights))
    check_weights(params, expected_shapes(spec), spec, cand.weights)
    info = {
        "algorithm": "pretrained",
        "weights": cand.weights,
        "sha256": file_sha256(cand.weights),
        "metrics": {},
    }
    return Candidate(cand.name, spec, {k: v.float() for k, v in params.items()}, info)
