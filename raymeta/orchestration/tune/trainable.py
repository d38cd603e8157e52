"""The Tune function trainable of ``raymeta tune``: one trial = one packed ``Population``.

The fine-tuning itself is ``raymeta.finetune`` (``Population`` and its loop ``run_schedule``);
this module is the Ray glue around it: reports, checkpoint save/restore, lineage events.

Why a plain function trainable with its own checkpoints (not Ray Train inside Tune): PBT's
exploit has to copy a better trial's weights and optimizer state, which only works when the
trial itself reports a Tune checkpoint (DESIGN.md, "Ray 2.60 facts"). Each report carries a
checkpoint directory with ``state.pt`` (tensors only, loaded with ``weights_only=True``) and
``trial.json`` (member configs and best-snapshot configs, seeds, progress, owning trial).

A packed trial's members: member 0 trains with the trial's Tune config (the one PBT/PB2
explores); members 1..M-1 get configs drawn from the prior with a generator seeded by ``(run
seed, trial index)``; all train the trial's model; member ``m`` draws minibatches with
``member_seeds(seed, trial, M)[m]`` and, from scratch, starts at the random init of that seed
plus one. After every report but the last, the trial's own members exploit (``TRIAL_RULE``:
the worst quarter, none below 4 members, member 0 keeps its Tune config).

**The budget is a cap.** A trial's clock is the steps it has trained itself: it stops at
``steps_per_member``, so the run's member-steps never exceed ``trials x members x
steps_per_member``. A PBT exploit restores *another* trial's checkpoint, whose own clock may be
behind or ahead; the exploited trial keeps its own clock (``TRIAL_STEPS`` in its config, which
the driver's ``TrialClock`` callback keeps equal to the trial's last reported ``trial_step``)
and trains the cloned weights for the steps it has left. A retried trial restores its own
checkpoint, whose ``trial.json`` holds its clock.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymeta.allocator import retain_freed_memory
from raymeta.core.checkpoint import Candidate
from raymeta.finetune.hparams import UNLIMITED, row_hparams
from raymeta.finetune.population import (
    TRIAL_RULE,
    Exploit,
    Population,
    data_dtype,
    every,
    initial_state,
    member_seeds,
    run_schedule,
)
from raymeta.plugins import add_import_roots
from raymeta.priors import Prior

STATE_FILE = "state.pt"
TRIAL_FILE = "trial.json"
TRIAL_STEPS = "raymeta_trial_steps"  # config key: the trial's own steps so far (see above)


@dataclass
class TrialSetup:
    """Everything a trial needs besides its config (shipped once via ``tune.with_parameters``).

    Holds the train and val splits only: the test split never reaches a trial."""

    kind: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    candidates: dict[str, Candidate]
    init: str  # "meta" or "scratch"
    prior: Prior
    members: int
    steps_per_member: int
    interval: int
    seed: int
    threads: int = 1
    device: str = "cpu"  # "cuda" when the trial holds a GPU (``--gpus-per-trial``)
    crash_marker: str | None = None  # test hook: SIGKILL the trial process once, after a report
    import_roots: list[str] = field(default_factory=list)  # where the user's modules live
    extra: dict[str, Any] = field(default_factory=dict)

    def candidate(self, config: Mapping[str, Any]) -> Candidate:
        name = str(config.get("model", next(iter(self.candidates))))
        return self.candidates.get(name, next(iter(self.candidates.values())))


def trial_index(trial_id: str) -> int:
    """Tune trial ids end in a running number (``abc12_00003``): a stable per-run index (any
    other id: a checksum of it, the same in every process, unlike ``hash``)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else zlib.crc32(trial_id.encode()) % 100_000


def member_config(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A Tune config as a member's config: the vocabulary's keys, with the trial's model."""
    return {**(row_hparams(config) or {}), "model": model}


def _population(
    setup: TrialSetup, cand: Candidate, configs: list[dict[str, Any]], seeds: list[int]
) -> Population:
    state = initial_state(
        cand.spec,
        cand.params if setup.init == "meta" else None,
        [s + 1 for s in seeds],
        data_dtype(setup.x_train),
    )
    return Population(cand.spec, setup.kind, cand.name, configs, seeds, state, horizon=UNLIMITED)


def new_population(setup: TrialSetup, config: Mapping[str, Any], idx: int) -> Population:
    """Member 0 takes ``config``; members 1..M-1 are prior samples from ``(seed, idx)``."""
    cand = setup.candidate(config)
    rng = np.random.default_rng([setup.seed, idx, 7])
    others = setup.prior.sample(setup.members - 1, rng) if setup.members > 1 else []
    configs = [member_config(c, cand.name) for c in [config, *others]]
    return _population(setup, cand, configs, member_seeds(setup.seed, idx, setup.members))


def save_trial(d: Path, pop: Population, info: dict[str, Any]) -> None:
    torch.save(pop.tensors(), d / STATE_FILE)
    (d / TRIAL_FILE).write_text(
        json.dumps(
            {**info, "configs": pop.configs, "best_configs": pop.best_configs, "seeds": pop.seeds},
            default=str,
        )
    )


def load_trial(d: Path, setup: TrialSetup) -> tuple[Population, dict[str, Any]]:
    info = json.loads((d / TRIAL_FILE).read_text())
    tensors = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    configs = info["configs"]
    cand = setup.candidate(configs[0])
    pop = _population(setup, cand, configs, [int(s) for s in info["seeds"]])
    pop.restore(tensors, info.get("best_configs", configs))
    return pop, info


def trial_device(setup: TrialSetup) -> torch.device:
    """The trial's device; a GPU trial on a node without CUDA is a one-line error."""
    if setup.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"trial was given device {setup.device!r} but torch.cuda is not available on this node"
        )
    return torch.device(setup.device)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else float("inf")


def tune_trainable(config: dict[str, Any], setup: TrialSetup) -> None:
    """Fine-tune one packed trial, reporting (and checkpointing) every ``setup.interval`` steps."""
    from ray import tune

    add_import_roots(setup.import_roots)
    torch.set_num_threads(max(1, setup.threads))
    retain_freed_memory()  # a trial process is raymeta's for its life
    trial_id = tune.get_context().get_trial_id()
    idx = trial_index(trial_id)
    events: list[dict[str, Any]] = []
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            pop, info = load_trial(Path(d), setup)
        owner = str(info["owner"])
        if owner != trial_id:  # a PBT exploit: another trial's weights, this trial's clock
            clock = int(config.get(TRIAL_STEPS, 0))
            old = pop.configs[0]
            pop.set_config(0, member_config(config, pop.name))
            events.append(
                {
                    "kind": "exploit",
                    "trial": trial_id,
                    "source": owner,
                    "trial_step": clock,
                    "source_step": int(info["trial_step"]),
                    "old": old,
                    "new": pop.configs[0],
                }
            )
        else:
            clock = int(info["trial_step"])
            events.append({"kind": "restore", "trial": trial_id, "trial_step": clock})
    else:
        pop, clock = new_population(setup, config, idx), 0
    dev = trial_device(setup)
    pop.to(dev)
    train = (setup.x_train.to(dev), setup.y_train.to(dev))
    val = (setup.x_val.to(dev), setup.y_val.to(dev))
    exploit = Exploit(
        setup.prior.perturb, TRIAL_RULE, lambda s: np.random.default_rng([setup.seed, idx, s])
    )
    stops = every(setup.interval, setup.steps_per_member, start=clock)
    if 0 < clock < setup.steps_per_member:
        _crash_once(setup, trial_id)
    for ev in run_schedule(pop, train, val, stops, start=clock, exploit=exploit):
        i = int(torch.argmin(pop.last_val).item())
        metrics: dict[str, Any] = {
            "val_loss": _finite(float(pop.last_val[i])),
            "best_val_loss": _finite(float(pop.best_val.min())),
            "trial_step": ev.step,
            "interval_member_steps": int(ev.taken.sum()),
            "members": pop.n_members,
            "interval_s": ev.seconds,
            "wall_time": time.time(),
        }
        if pop.last_acc is not None:
            metrics["val_accuracy"] = float(pop.last_acc[i])
        events += [{**e, "trial": trial_id, "trial_step": ev.step} for e in ev.events]
        metrics["events"] = json.dumps(events, default=str)
        events = []
        with tempfile.TemporaryDirectory(prefix="raymeta-trial-") as d:
            save_trial(Path(d), pop, {"owner": trial_id, "trial_step": ev.step})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if ev.step < setup.steps_per_member:
            _crash_once(setup, trial_id)


def _crash_once(setup: TrialSetup, trial_id: str) -> None:
    """Test hook: SIGKILL this trial process the first time any trial goes on training with a
    checkpoint to retry from (after a report, or on a restore). Code after ``tune.report`` may
    never run (a paused trial's function is abandoned there), so it is checked on the way in."""
    if setup.crash_marker is not None and not os.path.exists(setup.crash_marker):
        Path(setup.crash_marker).write_text(trial_id)
        os.kill(os.getpid(), signal.SIGKILL)
