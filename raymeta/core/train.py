"""Meta-training without Ray: config, sharded task draws, and the outer loop.

The meta-batch of step ``s`` is defined as ``shards`` slices, slice ``r`` drawn from a generator
seeded by ``(seed, s, r)``. A Ray Train run with W workers uses ``shards = W`` and gives rank
``r`` slice ``r``; running here with the same ``shards`` reproduces it exactly, which is how
the distributed path is tested against this one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from raymeta import checks
from raymeta.core import pretrain
from raymeta.core.candidates import CandidateConfig, as_candidate, check_candidates
from raymeta.core.checkpoint import Candidate, MetaCheckpoint
from raymeta.core.engine import (
    FOLDABLE_ALGOS,
    LR_PREFIX,
    LSLR_ALGOS,
    LSLR_PREFIX,
    MSL_ALGOS,
    InnerConfig,
    MetaEngine,
    Params,
    check_algorithm,
)
from raymeta.core.models import ModelSpec, build_model, footprint
from raymeta.errors import ConfigError
from raymeta.plugins import canonical, short_name
from raymeta.tasks import FamilySpec, TaskBatch, TaskFamily, make_family

OUTER_OPTIMIZERS = ("adam", "sgd")
OUTER_SCHEDULES = ("constant", "cosine")
SECOND_ORDER_ALGOS = ("maml", "metasgd", "anil")
# the algorithms whose meta-gradient goes through the inner loop, so that first_order has
# second-order terms to drop. fomaml drops them always: the flag asks for what it already is,
# a no-op rather than a mistake. reptile never differentiates through the inner loop (its
# update is the adapted weights' difference) and pretrain has no inner loop to differentiate:
# first_order=True there asked for something they cannot do (False, the default, is what
# meta.json records for them, and stays valid)
FIRST_ORDER_ALGOS = ("maml", "fomaml", "metasgd", "anil")
# fields added after the first release, left out of the fingerprint at their defaults so the
# fingerprint (resume / "same config" checks) of a config that does not use them is unchanged
LATER_DEFAULTS: dict[str, Any] = {
    "multi_step_loss": 0,
    "learn_inner_lr": False,
    "outer_schedule": "constant",
    "outer_lr_min": 0.0,
    "first_order_until": 0,
    "rates_lr_scale": 1.0,
}
MSL_FLOOR = 0.03  # MAML++'s floor of a non-final weight, times the number of inner steps
MAX_INNER_STEPS = 100_000
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MetaTrainConfig:
    """Everything that determines a meta-training run (stored in meta.json)."""

    # a built-in name, a plugin name, an import path "pkg.mod:Factory", or (from Python) the
    # factory / family class itself; ``validate`` replaces it by the name a Ray worker imports
    family: Any = "sinusoid"
    family_options: dict[str, Any] = field(default_factory=dict)
    model: Any = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    algo: str = "maml"
    inner_steps: int = 1
    inner_lr: float = 0.01
    first_order: bool = False
    checkpoint_inner: bool = False  # recompute inner steps in backward: memory ~flat in steps
    outer_optimizer: str = "adam"
    outer_lr: float = 1e-3
    steps: int = 1000
    meta_batch: int = 25
    seed: int = 0
    chunk_size: int | None = None
    val_every: int = 100
    val_tasks: int = 100
    eval_steps: int | None = None
    shards: int = 1
    dtype: str = "float32"
    candidates: list[Any] = field(default_factory=list)
    # MAML++ (Antoniou et al. 2019): multi-step loss for the first N outer steps, learned
    # per-layer per-step inner rates, cosine-annealed outer lr, first-order until step N
    multi_step_loss: int = 0
    learn_inner_lr: bool = False
    outer_schedule: str = "constant"
    outer_lr_min: float = 0.0
    first_order_until: int = 0
    # the outer learning rate of learned inner rates (LSLR's lslr.*, Meta-SGD's lr.*) as a
    # multiple of outer_lr: an outer Adam step moves every parameter by ~outer_lr, which at
    # inner rates of ~0.01 is a 10-100% change per step (BENCHMARKS.md "Learned inner rates")
    rates_lr_scale: float = 1.0

    def validate(self) -> MetaTrainConfig:
        """Types, ranges and finiteness of every field (one-line ``ConfigError``s), so the
        Python API refuses what the CLI refuses; family and model options are checked by the
        family and model they configure, when ``MetaTrainer`` builds them."""
        c = checks
        self.family = canonical("family", self.family)
        c.plain_data("family-options", c.mapping("family-options", self.family_options))
        if self.model != "auto":
            self.model = canonical("model", self.model)
        c.plain_data("model-options", c.mapping("model-options", self.model_options))
        c.string("algo", self.algo)
        check_algorithm(self.algo)
        c.string("outer-optimizer", self.outer_optimizer, OUTER_OPTIMIZERS)
        c.string("dtype", self.dtype, tuple(DTYPES))
        c.boolean("first-order", self.first_order)
        c.boolean("checkpoint-inner", self.checkpoint_inner)
        for name in ("steps", "meta_batch", "shards", "val_tasks", "val_every"):
            c.integer(name.replace("_", "-"), getattr(self, name), 1)
        c.integer("inner-steps", self.inner_steps, 0, MAX_INNER_STEPS)
        if self.eval_steps is not None:
            c.integer("eval-steps", self.eval_steps, 0, MAX_INNER_STEPS)
        c.integer("seed", self.seed, 0)
        c.number("inner-lr", self.inner_lr, 0.0, low_open=True)
        c.number("outer-lr", self.outer_lr, 0.0, low_open=True)
        if self.meta_batch < self.shards:
            raise ConfigError(
                f"meta-batch {self.meta_batch} is smaller than the number of shards/workers {self.shards}"
            )
        if self.chunk_size is not None:
            c.integer("chunk-size", self.chunk_size, 1)
        self._validate_mamlpp()
        if not isinstance(self.candidates, (list, tuple)):
            raise ConfigError(
                f"candidates must be a list, got {checks.show_value(self.candidates)}"
            )
        self.candidates = [as_candidate(x).validate() for x in self.candidates]
        check_candidates(self.candidates)
        for cand in self.candidates:  # each trained candidate's own settings must hold too
            if cand.weights is None:
                self._check_candidate_first_order(cand)
                self.single(cand).validate()
        return self

    def _check_candidate_first_order(self, cand: CandidateConfig) -> None:
        """A trained candidate's first_order (its own, or the run's it inherits) needs an
        algorithm with second-order terms; named here, as ``single`` loses where it came from."""
        one = self.single(cand)
        if not one.first_order or one.algo in FIRST_ORDER_ALGOS:
            return
        if cand.first_order is None:
            raise ConfigError(
                f"candidate {cand.name!r} ({one.algo}) inherits --first-order, which drops the "
                f"second-order terms of a differentiated inner loop and {one.algo} has none: give "
                f"it first_order=false, or first_order=true to the candidates that need it"
            )
        raise ConfigError(
            f"candidate {cand.name!r}: first_order=true drops the second-order terms of a "
            f"differentiated inner loop: it needs one of {', '.join(FIRST_ORDER_ALGOS)} "
            f"(got {one.algo}, which has none)"
        )

    def _validate_mamlpp(self) -> None:
        """The MAML++ options: ranges, and only with the algorithms they mean something for
        (each refusal one line, before any work)."""
        c = checks
        c.integer("multi-step-loss", self.multi_step_loss, 0)
        c.boolean("learn-inner-lr", self.learn_inner_lr)
        c.string("outer-schedule", self.outer_schedule, OUTER_SCHEDULES)
        c.number("outer-lr-min", self.outer_lr_min, 0.0)
        c.integer("first-order-until", self.first_order_until, 0)
        c.number("rates-lr-scale", self.rates_lr_scale, 0.0, low_open=True)
        if self.outer_lr_min >= self.outer_lr:
            raise ConfigError(
                f"outer-lr-min {self.outer_lr_min:g} must be below outer-lr {self.outer_lr:g}"
            )
        if self.outer_lr_min and self.outer_schedule != "cosine":
            raise ConfigError("outer-lr-min only applies with --outer-schedule cosine")
        # both count outer steps of this run (a run never goes past steps: another steps is
        # another config). A longer multi-step loss would stop its annealing part-way; N = steps
        # anneals over the whole run. First-order until N >= steps never turns second-order.
        if self.multi_step_loss > self.steps:
            raise ConfigError(
                f"multi-step-loss {self.multi_step_loss} must be at most steps {self.steps}: "
                f"its annealing over the first N outer steps would stop part-way (N = "
                f"{self.steps} anneals over the whole run)"
            )
        if self.first_order_until >= self.steps:
            raise ConfigError(
                f"first-order-until {self.first_order_until} must be below steps {self.steps}: "
                f"the run turns second-order at outer step N, which it never reaches (for a "
                f"first-order run, pass --first-order)"
            )
        if self.candidates:  # each trained candidate is checked with its own algo, by single
            return
        if self.multi_step_loss and (self.algo not in MSL_ALGOS or self.inner_steps < 1):
            raise ConfigError(
                f"multi-step-loss needs one of {', '.join(MSL_ALGOS)} with inner-steps >= 1 "
                f"(got {self.algo}, {self.inner_steps} inner steps)"
            )
        if self.learn_inner_lr and (self.algo not in LSLR_ALGOS or self.inner_steps < 1):
            raise ConfigError(
                f"learn-inner-lr needs one of {', '.join(LSLR_ALGOS)} with inner-steps >= 1 "
                f"(got {self.algo}, {self.inner_steps} inner steps; Meta-SGD learns its own rates)"
            )
        if self.rates_lr_scale != 1.0 and not (self.learn_inner_lr or self.algo == "metasgd"):
            raise ConfigError(
                f"rates-lr-scale scales the outer lr of learned inner rates: it needs "
                f"--learn-inner-lr or algo metasgd (got {self.algo} without learned rates)"
            )
        if self.checkpoint_inner and self.algo not in FOLDABLE_ALGOS:
            # reptile and pretrain never backpropagate through inner steps: nothing to recompute
            raise ConfigError(
                f"checkpoint-inner recomputes a differentiated inner loop: it needs one of "
                f"{', '.join(FOLDABLE_ALGOS)} (got {self.algo}, which has none)"
            )
        if self.first_order and self.algo not in FIRST_ORDER_ALGOS:
            raise ConfigError(
                f"first-order drops the second-order terms of a differentiated inner loop: it "
                f"needs one of {', '.join(FIRST_ORDER_ALGOS)} (got {self.algo}, which has none)"
            )
        if self.first_order_until and (self.algo not in SECOND_ORDER_ALGOS or self.first_order):
            raise ConfigError(
                f"first-order-until anneals a second-order algorithm ({', '.join(SECOND_ORDER_ALGOS)}"
                f" without --first-order), not {'first-order ' if self.first_order else ''}{self.algo}"
            )

    def single(self, cand: CandidateConfig) -> MetaTrainConfig:
        """The one-model config that trains candidate ``cand`` (its unset fields from this run)."""
        own_model = cand.model is not None
        return replace(
            self,
            model=cand.model if own_model else self.model,
            model_options=dict(
                cand.model_options
                if cand.model_options is not None
                else ({} if own_model else self.model_options)
            ),
            algo=self.algo if cand.algo is None else cand.algo,
            inner_steps=self.inner_steps if cand.inner_steps is None else cand.inner_steps,
            inner_lr=self.inner_lr if cand.inner_lr is None else cand.inner_lr,
            first_order=self.first_order if cand.first_order is None else cand.first_order,
            candidates=[],
        )

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for key in ("family", "model"):
            if not isinstance(d[key], str):
                d[key] = canonical(key, d[key])  # type: ignore[arg-type]
        d["family_options"] = dict(self.family_options)
        d["model_options"] = dict(self.model_options)
        d["candidates"] = [as_candidate(x).to_dict() for x in self.candidates]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        d = checks.mapping("meta-train config", d)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown meta-train option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (used to refuse mismatched resumes);
        options added later count only when they differ from their defaults, so a config that
        does not use them keeps the fingerprint it had before they existed."""
        d = {
            k: v
            for k, v in self.to_dict().items()
            if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])
        }
        d.update(pretrain.fingerprint_tag(self))  # global-label pretraining is a new result
        return hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()[:16]


def msl_weights(inner_steps: int, step: int, until: int) -> tuple[float, ...] | None:
    """MAML++'s multi-step loss weights at outer step ``step`` (0-based), or None (the plain
    final-step loss) once ``step >= until`` or with ``until == 0``.

    As in Antoniou et al.'s ``get_per_step_loss_importance_vector``: all S weights start at
    1/S; each non-final weight falls by ``step / (S * until)`` down to a floor of 0.03/S while
    the final one grows by ``(S-1)`` times that, capped so the sum stays 1; at ``until`` the
    loss becomes the final step's alone (one-hot)."""
    if until <= 0 or step >= until:
        return None
    s = inner_steps
    decay = step / (s * until)
    floor = MSL_FLOOR / s
    early = [max(1.0 / s - decay, floor) for _ in range(s - 1)]
    last = min(1.0 / s + (s - 1) * decay, 1.0 - (s - 1) * floor)
    return (*early, last)


def rate_groups(params: Params, scale: float) -> list[dict[str, Any]]:
    """The outer optimizer's parameter groups: one group, or with ``scale != 1`` the learned
    inner rates (``lslr.*``, ``lr.*``) in a second group whose learning rate is ``scale`` times
    the outer rate (``lr_scale``, read by ``MetaTrainer.apply`` at every step, so the schedule
    applies to both). Why only then: a checkpoint written with one group resumes unchanged."""
    rates = [v for k, v in params.items() if k.startswith((LSLR_PREFIX, LR_PREFIX))]
    rest = [v for k, v in params.items() if not k.startswith((LSLR_PREFIX, LR_PREFIX))]
    if scale == 1.0 or not rates:
        return [{"params": list(params.values()), "lr_scale": 1.0}]
    return [{"params": rest, "lr_scale": 1.0}, {"params": rates, "lr_scale": scale}]


def outer_lr_at(cfg: MetaTrainConfig, step: int) -> float:
    """The outer learning rate of outer step ``step`` (0-based): constant, or torch's
    ``CosineAnnealingLR`` over ``cfg.steps`` in closed form (``outer_lr`` at step 0, falling
    to ``outer_lr_min``), a function of the step alone so a resumed run continues exactly."""
    if cfg.outer_schedule == "constant":
        return cfg.outer_lr
    t = min(step, cfg.steps) / cfg.steps
    return cfg.outer_lr_min + (cfg.outer_lr - cfg.outer_lr_min) * (1 + math.cos(math.pi * t)) / 2


class DivergedError(ConfigError):
    """Meta-training produced a non-finite loss or gradient; no checkpoint is written."""


def diverged(step: int) -> DivergedError:
    return DivergedError(
        f"meta-training diverged: non-finite meta-loss or meta-gradient at step {step + 1} "
        "(lower --outer-lr / --inner-lr); no checkpoint was written"
    )


def nonfinite(loss: torch.Tensor, grads: Params) -> torch.Tensor:
    """0-dim bool on the tensors' device, True if the loss or any gradient is NaN or infinite
    (no host sync, so a GPU loop can check every step and read the flag only when it reports)."""
    bad = ~torch.isfinite(loss.detach()).all()
    for g in grads.values():
        bad = bad | ~torch.isfinite(g).all()
    return bad


def estimate_memory(
    cfg: MetaTrainConfig, family: TaskFamily, spec: ModelSpec, world: int = 1, gpu: bool = False
) -> float:
    """A lower-bound estimate of the bytes one process needs for a meta-training step.

    The meta-batch tensors of this process, the per-task adapted parameters of one vmapped
    chunk at every inner step, the activations of one chunk (host memory only when the
    computation runs on the CPU), the same for a validation batch, and six copies of the
    meta-parameters (weights, gradient, two Adam moments, checkpoint copies). Used only to refuse
    what cannot fit, so every term is counted once, without safety factors."""
    n_params, acts = footprint(spec)
    n_meta = n_params * (2 if cfg.algo == "metasgd" else 1)
    b = 8 if cfg.dtype == "float64" else 4
    e = family.episode_examples()
    per_example = math.prod(family.input_shape) + 1
    local = -(-cfg.meta_batch // max(1, world))
    k = cfg.inner_steps
    ek = k if cfg.eval_steps is None else cfg.eval_steps
    chunk = min(cfg.chunk_size or local, local)
    vchunk = min(cfg.chunk_size or cfg.val_tasks, cfg.val_tasks)
    act = 0 if gpu else 1
    train = local * e * per_example + chunk * (n_meta * (k + 2) + act * e * acts * (k + 1))
    val = cfg.val_tasks * e * per_example + vchunk * (n_params * (ek + 2) + act * e * acts * 2)
    return float(b) * (max(train, val) + 6 * n_meta)


def derive_seed(seed: int, step: int, shard: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, step, shard)``."""
    digest = hashlib.blake2b(f"{seed}:{step}:{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def shard_sizes(meta_batch: int, shards: int) -> list[int]:
    """Split the meta-batch as evenly as possible: the first ``meta_batch % shards`` get one more."""
    base, extra = divmod(meta_batch, shards)
    return [base + (1 if r < extra else 0) for r in range(shards)]


class MetaTrainer:
    """The stateful wrapper around the pure engine: meta-parameters, outer optimizer, step.

    ``rank`` / ``world`` select which shards this process computes; the caller sums the
    returned gradient sums across processes (all-reduce) before ``apply``.
    """

    def __init__(
        self,
        cfg: MetaTrainConfig,
        rank: int = 0,
        world: int = 1,
        device: str | torch.device = "cpu",
    ):
        self.cfg = cfg.validate()
        if cfg.candidates:
            raise ConfigError(
                "MetaTrainer trains one model; a config with candidates is trained by "
                "raymeta.run_meta_train (or 'raymeta meta-train --candidate ...')"
            )
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.dtype = DTYPES[cfg.dtype]
        self.family: TaskFamily = make_family(FamilySpec(cfg.family, cfg.family_options))
        name = self.family.default_model() if cfg.model == "auto" else cfg.model
        self.spec = ModelSpec(
            name, self.family.input_shape, self.family.output_dim, dict(cfg.model_options)
        )
        # algo=pretrain on global labels trains a C-way model and stores it N-way (core.pretrain)
        self.global_pretrain: pretrain.GlobalPretraining | None = None
        if pretrain.formulation(cfg.algo, self.family) == pretrain.GLOBAL:
            self.global_pretrain = pretrain.GlobalPretraining(
                self.family, self.spec, self.family.episode_examples()
            )
        train_spec = self.global_pretrain.train_spec if self.global_pretrain else self.spec
        checks.check_fits(
            f"meta-training {name!r} on {cfg.family} (meta-batch {cfg.meta_batch}, "
            f"{self.family.episode_examples()} examples per task)",
            estimate_memory(cfg, self.family, train_spec, world, self.device.type != "cpu"),
            "lower --meta-batch / --val-tasks, set --chunk-size, or use a smaller model",
        )
        torch.manual_seed(cfg.seed)
        model = build_model(train_spec).to(device=self.device, dtype=self.dtype)
        self.engine = MetaEngine(
            model,
            self.family.kind,
            cfg.algo,
            InnerConfig(
                cfg.inner_steps,
                cfg.inner_lr,
                cfg.first_order,
                cfg.checkpoint_inner,
                cfg.learn_inner_lr,
            ),
            cfg.chunk_size,
        )
        self.params: Params = {
            k: v.requires_grad_(True) for k, v in self.engine.init_params().items()
        }
        self.eval_engine = self.engine  # global-label pretraining evaluates its N-way model
        if self.global_pretrain is not None:
            self.eval_engine = MetaEngine(
                self.global_pretrain.skeleton(self.device, self.dtype),
                self.family.kind,
                cfg.algo,
                InnerConfig(cfg.inner_steps, cfg.inner_lr),
                cfg.chunk_size,
            )
        opt_cls = torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.SGD
        self.opt = opt_cls(rate_groups(self.params, cfg.rates_lr_scale), lr=cfg.outer_lr)
        self.step = 0

    def my_shards(self) -> list[int]:
        return list(range(self.rank, self.cfg.shards, self.world))

    def draw(self, step: int, shards: list[int] | None = None) -> TaskBatch:
        sizes = shard_sizes(self.cfg.meta_batch, self.cfg.shards)
        parts = []
        for r in self.my_shards() if shards is None else shards:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, step, r))
            parts.append(self.family.sample("train", sizes[r], g))
        return TaskBatch.cat(parts).to(self.device, self.dtype)

    def local_grad(self, step: int | None = None) -> tuple[torch.Tensor, Params]:
        """Summed query loss and summed meta-gradient over this process's shards (with the MAML++
        options of outer step ``step``: its multi-step loss weights, first- or second-order)."""
        s = self.step if step is None else step
        if self.global_pretrain is not None:  # labelled minibatch, sharded like the episodes
            gp = self.global_pretrain
            sizes = shard_sizes(self.cfg.meta_batch, self.cfg.shards)
            mine = self.my_shards()
            x, y = gp.draw(
                [derive_seed(self.cfg.seed, s, r) for r in mine],
                [sizes[r] for r in mine],
                self.device,
                self.dtype,
            )
            chunk = self.cfg.chunk_size * gp.per_task if self.cfg.chunk_size else None
            return gp.grad(self.engine.model, self.params, x, y, chunk)
        batch = self.draw(s)
        detached = {k: v.detach() for k, v in self.params.items()}
        return self.engine.meta_grad(
            detached,
            batch,
            reduction="sum",
            first_order=s < self.cfg.first_order_until,
            step_weights=msl_weights(self.cfg.inner_steps, s, self.cfg.multi_step_loss),
        )

    def apply(self, grad_sums: Params) -> None:
        """Outer step with the all-reduced gradient sums (divided by the global meta-batch), at
        this step's outer learning rate (``outer_lr_at``)."""
        for k, p in self.params.items():
            p.grad = (grad_sums[k] / self.cfg.meta_batch).to(p.dtype)
        lr = outer_lr_at(self.cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    def validate(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, -1, 0))
        batch = self.family.sample("val", self.cfg.val_tasks, g).to(self.device, self.dtype)
        return self.eval_engine.evaluate(self.stored_params(), batch, self.cfg.eval_steps)

    def stored_params(self) -> Params:
        """The parameters a checkpoint stores: the trained ones, or after global-label
        pretraining the trained body with a fresh N-way head (``core.pretrain``)."""
        if self.global_pretrain is not None:
            return self.global_pretrain.n_way(self.params)
        return {k: v.detach() for k, v in self.params.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in sd["params"].items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(sd["opt"])
        self.step = int(sd["step"])
        if "torch_rng" in sd:
            torch.set_rng_state(sd["torch_rng"])

    def to_checkpoint(
        self, metrics: dict[str, Any] | None = None, name: str | None = None
    ) -> MetaCheckpoint:
        """This run as a one-candidate meta-checkpoint; the candidate is ``name`` (default:
        the model's short name). The family is stored under the name a Ray worker imports."""
        name = name or short_name(self.spec.name)
        info: dict[str, Any] = {
            "algorithm": self.cfg.algo,
            "inner_lr": self.cfg.inner_lr,
            "inner_steps": self.cfg.inner_steps,
            "metrics": metrics or {},
        }
        if self.cfg.learn_inner_lr:  # the mean learned rate of each inner step, for reading
            rates = [v.detach() for k, v in self.params.items() if k.startswith(LSLR_PREFIX)]
            info["learned_inner_lrs"] = [
                float(x) for x in torch.stack(rates).mean(0).cpu().tolist()
            ]
        if self.global_pretrain is not None:  # which pretraining ran (reports say it)
            info[pretrain.INFO_KEY] = self.global_pretrain.info(self.cfg.meta_batch)
        elif self.cfg.algo == pretrain.PRETRAIN:
            info[pretrain.INFO_KEY] = {"formulation": pretrain.EPISODIC}
        params = {k: v.cpu().float() for k, v in self.stored_params().items()}
        return MetaCheckpoint(
            family=FamilySpec(self.cfg.family, self.family.options()),
            candidates={name: Candidate(name, self.spec, params, info)},
            config=self.cfg.to_dict(),
            metrics=metrics or {},
        )


ProgressFn = Callable[[int, dict[str, float]], None]


def require_config(cfg: Any) -> MetaTrainConfig:
    """``cfg`` if it is a ``MetaTrainConfig``, else a one-line ``ConfigError`` (the Python API's
    entry points take the dataclass; a dict failed deep inside with an ``AttributeError``)."""
    if not isinstance(cfg, MetaTrainConfig):
        raise ConfigError(
            "cfg must be a MetaTrainConfig (MetaTrainConfig.from_dict(d) reads a mapping), "
            f"got {checks.show_value(cfg)}"
        )
    return cfg


def _check_call(cfg: Any, log_every: Any, device: Any) -> None:
    """``meta_train``'s own arguments as one-line ``ConfigError``s before the first step: a
    dict config was an ``AttributeError``, ``log_every=0`` a ``ZeroDivisionError`` after the
    first step, an unknown device torch's ``RuntimeError``."""
    require_config(cfg)
    checks.integer("log-every", log_every, 1)
    if not isinstance(device, torch.device):
        try:
            torch.device(checks.string("device", device))
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r} (use cpu or cuda[:N])") from None


def meta_train(
    cfg: MetaTrainConfig,
    progress: ProgressFn | None = None,
    log_every: int = 100,
    device: str | torch.device = "cpu",
) -> MetaTrainer:
    """Meta-train in this process (all shards here); returns the trainer with final parameters."""
    _check_call(cfg, log_every, device)
    tr = MetaTrainer(cfg, device=device)
    t0, tasks = time.perf_counter(), 0
    while tr.step < cfg.steps:
        loss_sum, grads = tr.local_grad()
        if bool(nonfinite(loss_sum, grads)):
            raise diverged(tr.step)
        tr.apply(grads)
        tasks += cfg.meta_batch
        if progress is not None and (tr.step % log_every == 0 or tr.step == cfg.steps):
            metrics = {
                "meta_loss": float(loss_sum) / cfg.meta_batch,
                "tasks_per_s": tasks / (time.perf_counter() - t0),
            }
            if tr.step % cfg.val_every == 0 or tr.step == cfg.steps:
                metrics["val_loss"] = tr.validate()["loss"]
            progress(tr.step, metrics)
    return tr


def preflight(cfg: MetaTrainConfig) -> None:
    """Build the family and model, draw one train and one val task, and take one meta-gradient
    on a single task in this process: a bad option, a model or family whose own code raises,
    or a model that breaks under ``vmap`` (BatchNorm with running statistics) fails here in one
    line, before a Ray worker starts or anything is written. Second-order algorithms also check
    that the vmapped meta-gradient equals a per-task loop (``check_second_order``): some norm
    layers get a wrong one under vmap, which would otherwise train silently wrong."""
    from raymeta.plugins import blame

    with blame((cfg.model, cfg.family), "before meta-training started"):
        _preflight(cfg)


def _preflight(cfg: MetaTrainConfig) -> None:
    from raymeta.core.contract import check_model_runs, check_second_order

    trainer = MetaTrainer(cfg)
    batch = trainer.draw(0, shards=[0]).slice(0, 1)
    trainer.family.sample("val", 1, torch.Generator().manual_seed(0))
    label = short_name(trainer.spec.name)
    model, spec = trainer.engine.model, trainer.spec
    if trainer.global_pretrain is not None:  # its model is built C-way (core.pretrain)
        spec = trainer.global_pretrain.train_spec
    try:
        check_model_runs(model, spec.input_shape, spec.output_dim)
        detached = {k: v.detach() for k, v in trainer.params.items()}
        loss, _ = trainer.engine.meta_grad(detached, batch)
        if trainer.global_pretrain is not None:  # its labelled step too, on a few examples
            gp = trainer.global_pretrain
            x, y = gp.draw([0], [1], trainer.device, trainer.dtype)
            loss = loss + gp.grad(model, detached, x, y)[0]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model {label!r} fails in a meta-training step ({cfg.algo}, vmapped over tasks): "
            f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        ) from None
    if not bool(torch.isfinite(loss)):
        raise diverged(0)  # e.g. an inner lr of 1e30: the run's own message, before any work
    if cfg.algo in ("maml", "metasgd") and not cfg.first_order and cfg.inner_steps > 0:
        check_second_order(model, spec.input_shape, spec.output_dim)
