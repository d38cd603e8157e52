"""SWEEP.yaml: what a benchmark sweep runs, validated before anything starts.

Example::

    name: sinusoid-demo
    meta: [runs/sinusoid-meta]          # one or more meta-checkpoint directories
    strategies: [scratch+broad+random, scratch+broad+pbt, meta+fixed-default, meta+learned+pbt]
    tasks: 20                           # held-out meta-test task indices 0..19 (or a list)
    seeds: [0, 1]
    population: 8                       # members per (strategy, task, seed)
    budget: 100                         # fine-tuning steps per member
    interval: 10                        # validation / PBT interval in steps
    fixed_steps: 10                     # steps of the fixed-default strategy
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymeta._yaml import load_yaml_mapping
from raymeta.errors import ConfigError
from raymeta.orchestration.finetune import Strategy
from raymeta.tasks import check_split_options

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_KEYS = {
    "name",
    "meta",
    "strategies",
    "tasks",
    "seeds",
    "population",
    "budget",
    "interval",
    "fixed_steps",
    "task_options",
}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    meta: tuple[Path, ...]
    strategies: tuple[str, ...]
    tasks: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    population: int = 8
    budget: int = 100
    interval: int = 10
    fixed_steps: int = 10
    task_options: dict[str, int] = field(default_factory=dict)  # split sizes of held-out tasks

    def units(self) -> list[dict[str, Any]]:
        """Every (meta, strategy, task, seed) combination, keyed for idempotent appends.

        Keys name a checkpoint by its identity (``<basename>@<sha8 of meta.json>``), not its
        basename alone: ``runs/a/meta`` and ``runs/b/meta`` are different units, and a
        checkpoint retrained in place gets new units instead of silently reusing old rows.
        Strategy labels stay ``STRATEGY@<basename>`` unless two checkpoints share a basename."""
        ids = [meta_id(m) for m in self.meta]
        names = [m.name for m in self.meta]
        out = []
        for meta, ident in zip(self.meta, ids, strict=True):
            shown = meta.name if names.count(meta.name) == 1 else ident
            for strat in self.strategies:
                for task in self.tasks:
                    for seed in self.seeds:
                        label = strat if len(self.meta) == 1 else f"{strat}@{shown}"
                        out.append(
                            {
                                "key": f"{ident}/{strat}/{task}/{seed}",
                                "meta": str(meta),
                                "strategy": strat,
                                "label": label,
                                "task": task,
                                "seed": seed,
                            }
                        )
        return out


def meta_id(path: Path) -> str:
    """A checkpoint's identity: ``<basename>@<first 8 hex of sha256(meta.json)>``. meta.json
    holds every file's sha256, so equal ids mean equal checkpoints."""
    try:
        digest = hashlib.sha256((path / "meta.json").read_bytes()).hexdigest()[:8]
    except OSError as exc:
        raise ConfigError(
            f"sweep: cannot read meta-checkpoint {path}: {exc.strerror or exc}"
        ) from None
    return f"{path.name}@{digest}"


def _resolve(p: Path, base: Path | None) -> Path:
    """Relative paths are taken from the working directory, else from the YAML file's folder."""
    if p.is_absolute() or p.exists() or base is None:
        return p
    return base / p


def _pos_int(data: dict[str, Any], key: str, default: int) -> int:
    v = data.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"sweep: {key} must be a positive integer, got {v!r}")
    return v


def _task_options(raw: Any) -> dict[str, int]:
    """Split-size overrides for every held-out task (e.g. ``{val_size: 50}``), checked here."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("sweep: task_options must be a mapping such as {val_size: 50}")
    check_split_options(raw, "sweep: task_options key")
    return {str(k): _pos_int(raw, k, 1) for k in raw}


def parse_sweep(data: dict[str, Any], base: Path | None = None) -> SweepConfig:
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"sweep: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = str(data.get("name", "sweep"))
    if not _NAME.match(name):
        raise ConfigError(f"sweep: name {name!r} may only hold letters, digits, '.', '_' and '-'")
    metas = data.get("meta")
    if isinstance(metas, str):
        metas = [metas]
    if not metas or not isinstance(metas, list):
        raise ConfigError("sweep: 'meta' must name at least one meta-checkpoint directory")
    paths = tuple(_resolve(Path(m), base) for m in map(str, metas))
    seen: dict[str, Path] = {}
    for p in paths:
        if not (p / "meta.json").is_file():
            raise ConfigError(f"sweep: meta-checkpoint {p} does not exist (no meta.json)")
        digest = meta_id(p).rsplit("@", 1)[1]  # a byte-identical copy is the same checkpoint
        if digest in seen:
            raise ConfigError(
                f"sweep: meta lists the same meta-checkpoint twice ({seen[digest]} and {p})"
            )
        seen[digest] = p
    strategies = data.get("strategies")
    if not strategies or not isinstance(strategies, list):
        raise ConfigError("sweep: 'strategies' must be a non-empty list")
    strategies = [Strategy.parse(str(s)).name for s in strategies]
    tasks = data.get("tasks")
    if isinstance(tasks, int) and not isinstance(tasks, bool):
        if tasks < 1:
            raise ConfigError("sweep: 'tasks' is empty")
        tasks = list(range(tasks))
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(
            "sweep: 'tasks' must be a count or a non-empty list of held-out task indices"
        )
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tasks):
        raise ConfigError("sweep: task indices must be non-negative integers")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError("sweep: 'seeds' must be a non-empty list of integers")
    cfg = SweepConfig(
        name=name,
        meta=paths,
        strategies=tuple(dict.fromkeys(strategies)),
        tasks=tuple(dict.fromkeys(tasks)),
        seeds=tuple(dict.fromkeys(seeds)),
        population=_pos_int(data, "population", 8),
        budget=_pos_int(data, "budget", 100),
        interval=_pos_int(data, "interval", 10),
        fixed_steps=_pos_int(data, "fixed_steps", 10),
        task_options=_task_options(data.get("task_options")),
    )
    return cfg


def load_sweep(path: str | Path) -> SweepConfig:
    p = Path(path)
    return parse_sweep(load_yaml_mapping(p), base=p.resolve().parent)
