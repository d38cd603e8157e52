"""Meta-training without Ray: config, sharded task draws, and the outer loop.

The meta-batch of step ``s`` is defined as ``shards`` slices, slice ``r`` drawn from a generator
seeded by ``(seed, s, r)``. A Ray Train run with W workers uses ``shards = W`` and gives rank
``r`` slice ``r``; running here with the same ``shards`` reproduces it exactly, which is how
the distributed path is tested against this one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from raymeta.core.checkpoint import Candidate, MetaCheckpoint
from raymeta.core.engine import InnerConfig, MetaEngine, Params, check_algorithm
from raymeta.core.models import ModelSpec, build_model
from raymeta.errors import ConfigError
from raymeta.tasks import FamilySpec, TaskBatch, TaskFamily, make_family

OUTER_OPTIMIZERS = ("adam", "sgd")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MetaTrainConfig:
    """Everything that determines a meta-training run (stored in meta.json)."""

    family: str = "sinusoid"
    family_options: dict[str, Any] = field(default_factory=dict)
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    algo: str = "maml"
    inner_steps: int = 1
    inner_lr: float = 0.01
    first_order: bool = False
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

    def validate(self) -> MetaTrainConfig:
        check_algorithm(self.algo)
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise ConfigError(
                f"unknown outer optimizer {self.outer_optimizer!r} (choose adam or sgd)"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r} (choose float32 or float64)")
        for name in ("steps", "meta_batch", "shards", "val_tasks", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.inner_steps < 0:
            raise ConfigError(f"inner-steps must be >= 0, got {self.inner_steps}")
        if self.meta_batch < self.shards:
            raise ConfigError(
                f"meta-batch {self.meta_batch} is smaller than the number of shards/workers {self.shards}"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk-size must be >= 1, got {self.chunk_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown meta-train option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (used to refuse mismatched resumes)."""
        return hashlib.sha256(repr(sorted(self.to_dict().items())).encode()).hexdigest()[:16]


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
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.dtype = DTYPES[cfg.dtype]
        self.family: TaskFamily = make_family(FamilySpec(cfg.family, cfg.family_options))
        name = self.family.default_model() if cfg.model == "auto" else cfg.model
        self.spec = ModelSpec(
            name, self.family.input_shape, self.family.output_dim, dict(cfg.model_options)
        )
        torch.manual_seed(cfg.seed)
        model = build_model(self.spec).to(device=self.device, dtype=self.dtype)
        self.engine = MetaEngine(
            model,
            self.family.kind,
            cfg.algo,
            InnerConfig(cfg.inner_steps, cfg.inner_lr, cfg.first_order),
            cfg.chunk_size,
        )
        self.params: Params = {
            k: v.requires_grad_(True) for k, v in self.engine.init_params().items()
        }
        opt_cls = torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.SGD
        self.opt = opt_cls(list(self.params.values()), lr=cfg.outer_lr)
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
        """Summed query loss and summed meta-gradient over this process's shards."""
        batch = self.draw(self.step if step is None else step)
        detached = {k: v.detach() for k, v in self.params.items()}
        return self.engine.meta_grad(detached, batch, reduction="sum")

    def apply(self, grad_sums: Params) -> None:
        """Outer step with the all-reduced gradient sums (divided by the global meta-batch)."""
        for k, p in self.params.items():
            p.grad = (grad_sums[k] / self.cfg.meta_batch).to(p.dtype)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1

    def validate(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, -1, 0))
        batch = self.family.sample("val", self.cfg.val_tasks, g).to(self.device, self.dtype)
        return self.engine.evaluate(self.params, batch, self.cfg.eval_steps)

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

    def to_checkpoint(self, metrics: dict[str, Any] | None = None) -> MetaCheckpoint:
        info = {
            "algorithm": self.cfg.algo,
            "inner_lr": self.cfg.inner_lr,
            "inner_steps": self.cfg.inner_steps,
            "metrics": metrics or {},
        }
        params = {k: v.detach().cpu().float() for k, v in self.params.items()}
        return MetaCheckpoint(
            family=self.family.spec(),
            candidates={self.spec.name: Candidate(self.spec.name, self.spec, params, info)},
            config=self.cfg.to_dict(),
            metrics=metrics or {},
        )


ProgressFn = Callable[[int, dict[str, float]], None]


def meta_train(
    cfg: MetaTrainConfig,
    progress: ProgressFn | None = None,
    log_every: int = 100,
    device: str | torch.device = "cpu",
) -> MetaTrainer:
    """Meta-train in this process (all shards here); returns the trainer with final parameters."""
    tr = MetaTrainer(cfg, device=device)
    t0, tasks = time.perf_counter(), 0
    while tr.step < cfg.steps:
        loss_sum, grads = tr.local_grad()
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
