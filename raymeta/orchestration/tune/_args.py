"""Argument checks of ``run_tune``, done before the checkpoint is read or Ray is started.

The CLI's ``type=`` functions refuse the same values; these make the Python API refuse them
too (``population=True`` is not one trial, ``cpus_per_trial=nan`` must not reach Ray), and they
check that ``--out`` and a local ``--storage`` can be written without creating anything, so a
read-only or file ``--out`` is one line before any work instead of a traceback after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raymeta import checks
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.core.models import expected_shapes
from raymeta.errors import ConfigError
from raymeta.paths import probe_writable

MAX_POPULATION = 100_000  # Tune trials of one run
MAX_MEMBERS = 1 << 24  # members of the whole population


def check_tune_args(
    population: Any,
    members_per_trial: Any,
    budget: Any,
    interval: Any,
    seed: Any,
    max_failures: Any,
    cpus_per_trial: Any,
    gpus_per_trial: Any,
    task_options: Mapping[str, Any] | None,
    out: str | Path,
    storage: str | None,
) -> None:
    c = checks
    pop = c.integer("--population", population, 1, MAX_POPULATION)
    members = c.integer("--members-per-trial", members_per_trial, 1, MAX_MEMBERS)
    if pop * members > MAX_MEMBERS:
        raise ConfigError(
            f"population {pop} x {members} = {pop * members:,} members, more than {MAX_MEMBERS:,}"
        )
    if budget is not None:
        c.integer("--budget", budget, 1)
    if interval is not None:
        c.integer("--interval", interval, 1)
    c.integer("--seed", seed, 0)
    c.integer("--max-failures", max_failures, 0)
    c.number("--cpus-per-trial", cpus_per_trial, 0.0, low_open=True)
    c.number("--gpus-per-trial", gpus_per_trial, 0.0)
    if task_options is not None:
        c.plain_data("--task-option", c.mapping("--task-option", task_options))
    out_p = Path(out).expanduser().absolute()
    if out_p.exists() and not out_p.is_dir():
        raise ConfigError(f"--out {out_p} exists and is not a directory")
    probe_writable(out_p / "x" if out_p.is_dir() else out_p)
    if storage is not None and "://" not in storage:
        st = Path(storage).expanduser().absolute()
        if st.exists() and not st.is_dir():
            raise ConfigError(f"--storage {st} exists and is not a directory")
        probe_writable(st / "x" if st.is_dir() else st, "--storage")


def check_members_fit(members_per_trial: int, ckpt: MetaCheckpoint) -> None:
    """One trial's packed members (weights, Adam moments, best snapshot, gradients) must fit."""
    for name, cand in ckpt.candidates.items():
        n_params = sum(math.prod(s) for s in expected_shapes(cand.spec).values())
        checks.check_fits(
            f"a tune trial of {members_per_trial} members of {name!r} ({n_params:,} parameters)",
            4.0 * 6 * n_params * members_per_trial,
            "lower --members-per-trial",
        )
