"""The Tune function trainable of ``raymeta tune``: one trial = one packed ``MemberGroup``.

Why a plain function trainable with its own checkpoints (not Ray Train inside Tune): PBT's
exploit has to copy a better trial's weights and optimizer state, which only works when the
trial itself reports a Tune checkpoint (DESIGN.md, "Ray 2.60 facts"). Each report carries a
checkpoint directory with ``state.pt`` (tensors only, loaded with ``weights_only=True``) and
``trial.json`` (member configs, seeds, progress, owning trial). Restoring a checkpoint written by
*another* trial is how a PBT exploit shows up here; it is recorded as a lineage event.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymeta.core.models import ModelSpec
from raymeta.orchestration._packed import MemberGroup, initial_state, member_seeds
from raymeta.priors import Prior

STATE_FILE = "state.pt"
TRIAL_FILE = "trial.json"


@dataclass
class Candidate:
    """A model a trial may train: its spec and meta-init (None = seeded random init)."""

    spec: ModelSpec
    params: dict[str, torch.Tensor] | None


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
    prior: Prior
    members: int
    steps_per_member: int
    interval: int
    seed: int
    threads: int = 1
    device: str = "cpu"  # "cuda" when the trial holds a GPU (``--gpus-per-trial``)
    crash_marker: str | None = None  # test hook: SIGKILL the trial process once, after a report
    extra: dict[str, Any] = field(default_factory=dict)

    def candidate(self, config: dict[str, Any]) -> tuple[str, Candidate]:
        name = str(config.get("model", next(iter(self.candidates))))
        if name not in self.candidates:
            name = next(iter(self.candidates))
        return name, self.candidates[name]


def trial_index(trial_id: str) -> int:
    """Tune trial ids end in a running number (``abc12_00003``): a stable per-run index."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else abs(hash(trial_id)) % 100_000


def new_group(setup: TrialSetup, config: dict[str, Any], idx: int) -> MemberGroup:
    """Member 0 takes ``config``; members 1..M-1 are prior samples from ``(seed, idx)``."""
    name, cand = setup.candidate(config)
    rng = np.random.default_rng([setup.seed, idx, 7])
    others = setup.prior.sample(setup.members - 1, rng) if setup.members > 1 else []
    configs = [{**c, "model": name} for c in [dict(config), *others]]
    seeds = member_seeds(setup.seed, idx, setup.members)
    state = initial_state(cand.spec, cand.params, [s + 1 for s in seeds])
    return MemberGroup(cand.spec, setup.kind, configs, seeds, state)


def save_trial(d: Path, group: MemberGroup, info: dict[str, Any]) -> None:
    torch.save(group.tensors(), d / STATE_FILE)
    (d / TRIAL_FILE).write_text(
        json.dumps({**info, "configs": group.configs, "seeds": group.seeds}, default=str)
    )


def load_trial(d: Path, setup: TrialSetup) -> tuple[MemberGroup, dict[str, Any]]:
    info = json.loads((d / TRIAL_FILE).read_text())
    tensors = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    _, cand = setup.candidate(info["configs"][0])
    group = MemberGroup.from_tensors(
        cand.spec, setup.kind, info["configs"], [int(s) for s in info["seeds"]], tensors
    )
    return group, info


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

    torch.set_num_threads(max(1, setup.threads))
    trial_id = tune.get_context().get_trial_id()
    idx = trial_index(trial_id)
    events: list[dict[str, Any]] = []
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            group, info = load_trial(Path(d), setup)
        step = int(info["trial_step"])
        owner = str(info["owner"])
        name, _ = setup.candidate(config)
        if owner != trial_id:
            old = group.configs[0]
            group.configs[0] = {**config, "model": name}
            events.append(
                {
                    "kind": "exploit",
                    "trial": trial_id,
                    "source": owner,
                    "trial_step": step,
                    "old": old,
                    "new": group.configs[0],
                }
            )
        else:
            events.append({"kind": "restore", "trial": trial_id, "trial_step": step})
    else:
        group, step = new_group(setup, config, idx), 0
    dev = trial_device(setup)
    group.to(dev)
    x_train, y_train = setup.x_train.to(dev), setup.y_train.to(dev)
    x_val, y_val = setup.x_val.to(dev), setup.y_val.to(dev)
    while step < setup.steps_per_member:
        # test hook, checked before training (code after tune.report may never run: a paused
        # trial's function is abandoned there): die once a checkpoint exists to retry from
        if setup.crash_marker is not None and step > 0 and not os.path.exists(setup.crash_marker):
            Path(setup.crash_marker).write_text(trial_id)
            os.kill(os.getpid(), signal.SIGKILL)
        t0 = time.perf_counter()
        n = min(setup.interval, setup.steps_per_member - step)
        taken = group.train(x_train, y_train, n)
        step += n
        val = group.evaluate(x_val, y_val)
        i = int(torch.argmin(val).item())
        metrics: dict[str, Any] = {
            "val_loss": _finite(float(val[i])),
            "best_val_loss": _finite(float(group.best_val.min())),
            "trial_step": step,
            "interval_member_steps": taken,
            "members": group.n_members,
            "interval_s": time.perf_counter() - t0,
            "wall_time": time.time(),
        }
        if group.last_acc is not None:
            metrics["val_accuracy"] = float(group.last_acc[i])
        if step < setup.steps_per_member:
            rng = np.random.default_rng([setup.seed, idx, step])
            events += [
                {**e, "trial": trial_id, "trial_step": step}
                for e in group.exploit_quarter(rng, setup.prior.perturb)
            ]
        metrics["events"] = json.dumps(events, default=str)
        events = []
        with tempfile.TemporaryDirectory(prefix="raymeta-trial-") as d:
            save_trial(Path(d), group, {"owner": trial_id, "trial_step": step})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
