"""SWEEP.yaml: what a benchmark sweep runs, validated before anything starts.

Example::

    name: sinusoid-demo
    meta: [runs/sinusoid-meta]          # one or more meta-checkpoint directories
    strategies: [scratch+broad+random, scratch+broad+pbt, meta+fixed-default, meta+learned+pbt]
    tasks: 20                           # held-out meta-test task indices 0..19 (or a list)
    seeds: [0, 1]
    population: 8                       # members per (strategy, task, seed)
    steps_per_member: 100               # fine-tuning steps of every member
    interval: 10                        # validation / PBT interval in steps
    fixed_steps: 10                     # steps of the fixed-default strategy

A strategy is ``INIT+PRIOR+SCHEDULER[+PICK]``, ``INIT+fixed-default[+PICK]`` or ``auto``: what
``raymeta priors fit`` chose for each checkpoint from meta-val evidence (``raymeta tune``'s
default; a chosen fixed default fine-tune trains ``steps_per_member`` steps, as it was measured).

Sizes mean what they mean in every raymeta command: ``population`` counts members,
``steps_per_member`` is how long each trains, and a unit's budget is their product (a cap: the
unit's ``member_steps`` never exceed it). ``budget``, which here meant steps per member before
``raymeta tune`` and the reports settled on "budget = total member-steps", is still read as
steps per member, with a warning.

Every key is checked for its type (``true`` is not a number), range and size before any unit is
listed, so a bad file is one ``ConfigError`` line; the bounds are the ``MAX_*`` constants below.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymeta import checks
from raymeta.bounded_yaml import load_yaml_mapping
from raymeta.errors import ConfigError, DeprecatedOption
from raymeta.finetune.strategy import AUTO, IN_PROCESS_SCHEDULERS, Strategy
from raymeta.results.sink import check_sweep_name
from raymeta.tasks import check_split_options

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Size bounds: each is far above any real sweep and far below what would exhaust the driver
# (units are listed up front) or a worker (population members are vmapped together).
MAX_LIST = 64  # meta-checkpoints, strategies
MAX_TASKS = 10_000  # held-out tasks in one sweep
MAX_TASK_INDEX = 10**9
MAX_SEEDS = 1_000
MAX_SEED = 2**32 - 1  # numpy and torch seeds
MAX_POPULATION = 4_096
MAX_STEPS = 1_000_000  # steps_per_member, interval, fixed_steps
MAX_SPLIT_ROWS = 100_000  # task_options: rows in one split of a held-out task
MAX_UNITS = 100_000
_KEYS = {
    "name",
    "meta",
    "strategies",
    "tasks",
    "seeds",
    "population",
    "steps_per_member",
    "budget",  # deprecated: steps_per_member
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
    population: int = 8  # members of each unit's population
    steps_per_member: int = 100
    interval: int = 10
    fixed_steps: int = 10
    task_options: dict[str, int] = field(default_factory=dict)  # split sizes of held-out tasks

    def to_dict(self) -> dict[str, Any]:
        """The sweep file's keys for this config: ``parse_sweep(cfg.to_dict())`` checks a
        config built by hand as a sweep file is checked (``run_sweep`` does)."""
        return {
            "name": self.name,
            "meta": [str(m) for m in self.meta],
            "strategies": list(self.strategies),
            "tasks": list(self.tasks),
            "seeds": list(self.seeds),
            "population": self.population,
            "steps_per_member": self.steps_per_member,
            "interval": self.interval,
            "fixed_steps": self.fixed_steps,
            "task_options": dict(self.task_options),
        }

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


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    """An int in ``lo..hi``; a bool (``true`` is 1 in Python), float or string is refused."""
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        shown = repr(v) if isinstance(v, (int, float, str, bool, type(None))) else type(v).__name__
        raise ConfigError(f"sweep: {what} must be an integer in {lo}..{hi}, got {shown[:80]}")
    return v


def _pos_int(data: dict[str, Any], key: str, default: int, hi: int = MAX_STEPS) -> int:
    return _int(data.get(key, default), key, 1, hi)


def _str_list(raw: Any, key: str, limit: int) -> list[str]:
    """A string or a non-empty list of up to ``limit`` non-empty strings."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"sweep: {key!r} must be a non-empty list of names")
    if len(raw) > limit:
        raise ConfigError(f"sweep: {key!r} lists {len(raw)} entries, at most {limit} are allowed")
    for v in raw:
        if not isinstance(v, str) or not v.strip():
            shown = repr(v) if isinstance(v, (int, float, bool, type(None))) else type(v).__name__
            raise ConfigError(f"sweep: every {key!r} entry must be a non-empty string, got {shown}")
    return raw


def _task_options(raw: Any) -> dict[str, int]:
    """Split-size overrides for every held-out task (e.g. ``{val_size: 50}``), checked here."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("sweep: task_options must be a mapping such as {val_size: 50}")
    if not all(isinstance(k, str) for k in raw):
        raise ConfigError("sweep: task_options keys must be option names such as val_size")
    check_split_options(raw, "sweep: task_options key")
    return {str(k): _pos_int(raw, k, 1, MAX_SPLIT_ROWS) for k in raw}


def _name(raw: Any) -> str:
    if not isinstance(raw, str):
        shown = repr(raw) if isinstance(raw, (int, float, bool, type(None))) else type(raw).__name__
        raise ConfigError(f"sweep: name must be a string, got {shown}")
    if not _NAME.match(raw):
        raise ConfigError(
            f"sweep: name {raw[:80]!r} may only hold letters, digits, '.', '_' and '-'"
        )
    return check_sweep_name(raw)


def _meta_paths(raw: Any, base: Path | None) -> tuple[Path, ...]:
    if not isinstance(raw, (str, list)) or not raw:
        raise ConfigError("sweep: 'meta' must name at least one meta-checkpoint directory")
    # absolute: the units run in Ray workers, whose working directory is not the driver's
    paths = tuple(_resolve(Path(m), base).absolute() for m in _str_list(raw, "meta", MAX_LIST))
    seen: dict[str, Path] = {}
    for p in paths:
        try:
            ok = (p / "meta.json").is_file()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"sweep: meta-checkpoint {p} does not exist (no meta.json)")
        digest = meta_id(p).rsplit("@", 1)[1]  # a byte-identical copy is the same checkpoint
        if digest in seen:
            raise ConfigError(
                f"sweep: meta lists the same meta-checkpoint twice ({seen[digest]} and {p})"
            )
        seen[digest] = p
    return paths


def _strategy(name: str) -> str:
    """A strategy a sweep's in-process population can run (pb2 and asha need Ray Tune), or
    ``auto`` (each checkpoint's strategy chosen on meta-val, ``finetune.strategy.resolve_auto``)."""
    if name == AUTO:
        return name
    strat = Strategy.parse(name)
    if strat.scheduler not in IN_PROCESS_SCHEDULERS:
        raise ConfigError(
            f"sweep: strategy {strat.name}: scheduler {strat.scheduler} runs only in raymeta tune "
            f"(a sweep's populations run in-process with {' or '.join(IN_PROCESS_SCHEDULERS)})"
        )
    return strat.name


def _tasks(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise ConfigError("sweep: 'tasks' is empty")
        return list(range(_int(raw, "tasks (a count)", 1, MAX_TASKS)))
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "sweep: 'tasks' must be a count or a non-empty list of held-out task indices"
        )
    if len(raw) > MAX_TASKS:
        raise ConfigError(f"sweep: 'tasks' lists {len(raw)} indices, at most {MAX_TASKS}")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in raw):
        raise ConfigError("sweep: task indices must be non-negative integers")
    return [_int(t, "a task index", 0, MAX_TASK_INDEX) for t in raw]


def _seeds(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("sweep: 'seeds' must be a non-empty list of integers")
    if len(raw) > MAX_SEEDS:
        raise ConfigError(f"sweep: 'seeds' lists {len(raw)} seeds, at most {MAX_SEEDS}")
    return [_int(s, "every seed", 0, MAX_SEED) for s in raw]


def _steps_per_member(data: dict[str, Any]) -> int:
    """``steps_per_member``, or the deprecated ``budget`` (same meaning here) with a warning."""
    if "budget" not in data:
        return _pos_int(data, "steps_per_member", 100)
    if "steps_per_member" in data:
        raise ConfigError("sweep: give steps_per_member, not both it and the deprecated budget")
    warnings.warn(
        "sweep: 'budget' is deprecated, it is the steps per member here: write "
        "'steps_per_member' (budget means total member-steps in every raymeta command)",
        DeprecatedOption,
        stacklevel=3,
    )
    return _pos_int(data, "budget", 100)


def parse_sweep(data: dict[str, Any], base: Path | None = None) -> SweepConfig:
    """Check every key's type, range and size; errors are one-line ``ConfigError``s."""
    if not isinstance(data, dict):
        raise ConfigError("sweep: the sweep file must hold a mapping of key: value")
    if base is not None:
        base = Path(checks.path("sweep: base", base))
    unknown = set(data) - _KEYS
    if unknown:
        shown = sorted(str(k)[:40] if _NAME.match(str(k)) else repr(str(k)[:40]) for k in unknown)
        raise ConfigError(f"sweep: unknown key(s) {', '.join(shown[:10])}")
    name = _name(data.get("name", "sweep"))
    paths = _meta_paths(data.get("meta"), base)
    raw_strategies = data.get("strategies")
    if not raw_strategies or not isinstance(raw_strategies, list):
        raise ConfigError("sweep: 'strategies' must be a non-empty list")
    strategies = [_strategy(s) for s in _str_list(raw_strategies, "strategies", MAX_LIST)]
    tasks = _tasks(data.get("tasks"))
    seeds = _seeds(data.get("seeds", [0]))
    cfg = SweepConfig(
        name=name,
        meta=paths,
        strategies=tuple(dict.fromkeys(strategies)),
        tasks=tuple(dict.fromkeys(tasks)),
        seeds=tuple(dict.fromkeys(seeds)),
        population=_pos_int(data, "population", 8, MAX_POPULATION),
        steps_per_member=_steps_per_member(data),
        interval=_pos_int(data, "interval", 10),
        fixed_steps=_pos_int(data, "fixed_steps", 10),
        task_options=_task_options(data.get("task_options")),
    )
    n_units = len(cfg.meta) * len(cfg.strategies) * len(cfg.tasks) * len(cfg.seeds)
    if n_units > MAX_UNITS:
        raise ConfigError(
            f"sweep: {n_units} units (meta x strategies x tasks x seeds), at most {MAX_UNITS} in one sweep"
        )
    return cfg


def load_sweep(path: str | os.PathLike[str]) -> SweepConfig:
    """The sweep file at ``path`` (a ``str`` or path-like), checked (``parse_sweep``); relative
    meta-checkpoint paths are taken from the working directory, else from the file's folder.
    A path that is not one (``load_sweep(3)`` was a bare TypeError) is a ``ConfigError``."""
    p = Path(checks.path("sweep file", path))
    return parse_sweep(load_yaml_mapping(p), base=p.resolve().parent)
