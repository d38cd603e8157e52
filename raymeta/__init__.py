"""raymeta: Ray-distributed, population-based meta-tuner.

The public API; everything a user needs is importable from here::

    import raymeta

    cfg = raymeta.MetaTrainConfig(family="sinusoid", algo="maml", steps=2000)
    raymeta.run_meta_train(cfg, "runs/meta", workers=2)       # on Ray Train (embedded Ray)
    ckpt = raymeta.load_meta_checkpoint("runs/meta")
    raymeta.write_priors("runs/meta", raymeta.fit_priors(ckpt, n_tasks=32).to_dict())
    report = raymeta.tune(raymeta.TuneRequest("runs/meta", "sinusoid:17", trials=8, out="runs/t"))
    model = raymeta.load_model("runs/t")                       # the tuned nn.Module, eval mode

Names load on first use (PEP 562): ``import raymeta`` imports neither torch nor Ray, and the
pure layers (``core``, ``tasks``, ``priors``, ``results``, ``finetune``) never import Ray; only
``orchestration`` and ``cli`` do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raymeta._version import __version__
from raymeta.lazy import lazy_attributes

if TYPE_CHECKING:
    from raymeta.allocator import retain_freed_memory
    from raymeta.core.candidates import CandidateConfig
    from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint, save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, meta_train
    from raymeta.errors import (
        CheckpointError,
        ClusterError,
        ConfigError,
        ContractError,
        DataError,
        DeprecatedOption,
        RaymetaError,
    )
    from raymeta.finetune.fit import PriorFitConfig, fit_priors
    from raymeta.finetune.hparams import FinetuneConfig, broad_space
    from raymeta.finetune.priors_file import write_priors
    from raymeta.finetune.run import run_population
    from raymeta.finetune.strategy import Strategy
    from raymeta.inference import load_model, predict
    from raymeta.orchestration.meta_train.ray_train import run_meta_train
    from raymeta.orchestration.sweep.config import SweepConfig, load_sweep, parse_sweep
    from raymeta.orchestration.sweep.run import run_sweep as sweep
    from raymeta.orchestration.tune.request import TuneRequest
    from raymeta.orchestration.tune.run import run_tune as tune
    from raymeta.priors.artifact import Priors, load_priors
    from raymeta.results.reader import read_results
    from raymeta.results.reporting import Report, report
    from raymeta.tasks import Task, TaskFamily, make_family

# public name -> the module that defines it (``tune`` and ``sweep`` are ``run_tune`` and
# ``run_sweep`` there)
_API: dict[str, str] = {
    # errors
    "RaymetaError": "raymeta.errors",
    "ConfigError": "raymeta.errors",
    "DataError": "raymeta.errors",
    "CheckpointError": "raymeta.errors",
    "ClusterError": "raymeta.errors",
    "DeprecatedOption": "raymeta.errors",
    "ContractError": "raymeta.errors",
    # task families
    "Task": "raymeta.tasks",
    "TaskFamily": "raymeta.tasks",
    "make_family": "raymeta.tasks",
    # meta-training and meta-checkpoints
    "MetaTrainConfig": "raymeta.core.train",
    "meta_train": "raymeta.core.train",
    "run_meta_train": "raymeta.orchestration.meta_train.ray_train",
    "CandidateConfig": "raymeta.core.candidates",
    "MetaCheckpoint": "raymeta.core.checkpoint",
    "load_meta_checkpoint": "raymeta.core.checkpoint",
    "save_meta_checkpoint": "raymeta.core.checkpoint",
    "write_priors": "raymeta.finetune.priors_file",  # checked; core's is the storage step
    # priors
    "PriorFitConfig": "raymeta.finetune.fit",
    "fit_priors": "raymeta.finetune.fit",
    "Priors": "raymeta.priors.artifact",
    "load_priors": "raymeta.priors.artifact",
    # fine-tuning
    "FinetuneConfig": "raymeta.finetune.hparams",
    "broad_space": "raymeta.finetune.hparams",
    "Strategy": "raymeta.finetune.strategy",
    "run_population": "raymeta.finetune.run",
    # tune, sweep, report
    "TuneRequest": "raymeta.orchestration.tune.request",
    "tune": "raymeta.orchestration.tune.run",
    # the tuned model
    "load_model": "raymeta.inference",
    "predict": "raymeta.inference",
    "SweepConfig": "raymeta.orchestration.sweep.config",
    "load_sweep": "raymeta.orchestration.sweep.config",
    "parse_sweep": "raymeta.orchestration.sweep.config",
    "sweep": "raymeta.orchestration.sweep.run",
    "read_results": "raymeta.results.reader",
    "report": "raymeta.results.reporting",
    "Report": "raymeta.results.reporting",
    # a process that runs large CPU steps: keep freed memory (what the CLI does)
    "retain_freed_memory": "raymeta.allocator",
}

__all__ = [
    "__version__",
    "RaymetaError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "ClusterError",
    "DeprecatedOption",
    "ContractError",
    "Task",
    "TaskFamily",
    "make_family",
    "MetaTrainConfig",
    "meta_train",
    "run_meta_train",
    "CandidateConfig",
    "MetaCheckpoint",
    "load_meta_checkpoint",
    "save_meta_checkpoint",
    "write_priors",
    "PriorFitConfig",
    "fit_priors",
    "Priors",
    "load_priors",
    "FinetuneConfig",
    "broad_space",
    "Strategy",
    "run_population",
    "TuneRequest",
    "tune",
    "load_model",
    "predict",
    "SweepConfig",
    "load_sweep",
    "parse_sweep",
    "sweep",
    "read_results",
    "report",
    "Report",
    "retain_freed_memory",
]


_RENAMED = {"tune": "run_tune", "sweep": "run_sweep"}
_load = lazy_attributes(__name__, {_RENAMED.get(k, k): m for k, m in _API.items()})


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'raymeta' has no attribute {name!r}")
    value = _load(_RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
