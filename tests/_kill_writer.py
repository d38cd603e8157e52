"""Run a meta-checkpoint writer once per kill point, SIGKILLing it before its N-th filesystem call.

Used by tests/test_atomic.py: ``python _kill_writer.py WORKDIR MODE`` builds a template
checkpoint, counts the writer's filesystem calls in one uninterrupted run, then for every N in
0..count copies the template to ``WORKDIR/N/ck`` and forks a child that wraps the ``os`` /
``open`` / ``flock`` functions (and ``raymeta.fileio.exchange``, the one call made through ctypes)
so that it kills itself with SIGKILL right before call N. Production code carries no hook.
Prints a JSON summary: {"count": C, "killed": [N...], "ops": [name of call N...]}.

MODE: save (overwrite an existing checkpoint), save-fallback (same, with the exchange forced
unavailable), priors (replace versioned priors) or priors-legacy (replace a ``priors.json``).
"""

from __future__ import annotations

import builtins
import fcntl
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import torch

import raymeta.fileio as rio
from raymeta.core.checkpoint import (
    Candidate,
    MetaCheckpoint,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.models import ModelSpec, build_model
from raymeta.tasks.base import FamilySpec

OS_CALLS = (
    "open",
    "replace",
    "rename",
    "mkdir",
    "rmdir",
    "unlink",
    "remove",
    "link",
    "fsync",
    "chmod",
    "fchmod",
    "ftruncate",
    "pwrite",
    "write",
)


def ckpt(which: str, priors: dict[str, Any] | None = None) -> MetaCheckpoint:
    torch.manual_seed(0 if which == "old" else 1)
    spec = ModelSpec("mlp", (1,), 1, {"widths": [4, 3]})
    params = {k: v.detach().clone() for k, v in build_model(spec).named_parameters()}
    return MetaCheckpoint(
        family=FamilySpec("sinusoid", {"shots": 10}),
        candidates={"mlp": Candidate("mlp", spec, params, {"inner_lr": 0.01})},
        config={"steps": 3},
        metrics={"which": which},
        priors=priors,
    )


def make_legacy(path: Path) -> None:
    """Rewrite a checkpoint's versioned priors file as an earlier version's ``priors.json``."""
    meta = json.loads((path / "meta.json").read_text())
    name = meta.pop("priors")
    os.rename(path / name, path / "priors.json")
    meta["files"]["priors.json"] = meta["files"].pop(name)
    (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def writer(mode: str, path: Path) -> None:
    if mode.startswith("save"):
        save_meta_checkpoint(path, ckpt("new"), overwrite=True)
    else:
        write_priors(path, {"which": "new"})


def instrument(kill_at: int, ops: list[str]) -> None:
    n = [0]

    def wrap(owner: Any, name: str) -> None:
        orig = getattr(owner, name)

        def call(*a: Any, **k: Any) -> Any:
            if n[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            n[0] += 1
            ops.append(name)
            return orig(*a, **k)

        setattr(owner, name, call)

    for name in OS_CALLS:
        wrap(os, name)
    wrap(builtins, "open")
    wrap(io, "open")
    wrap(fcntl, "flock")
    wrap(rio, "exchange")


def run_child(mode: str, path: Path, kill_at: int, report: Path | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if mode == "save-fallback":
                rio.exchange = lambda a, b: False  # type: ignore[assignment]
            ops: list[str] = []
            instrument(kill_at, ops)
            writer(mode, path)
            if report is not None:
                report.write_text(json.dumps(ops))  # serialised before its own open is counted
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def main() -> None:
    work, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    template = work / "template" / "ck"
    save_meta_checkpoint(template, ckpt("old", {"which": "old"} if "priors" in mode else None))
    if mode == "priors-legacy":
        make_legacy(template)
    scratch = work / "count" / "ck"
    shutil.copytree(template, scratch)
    report = work / "ops.json"
    status = run_child(mode, scratch, -1, report)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    ops = json.loads(report.read_text())
    count = len(ops)  # N = count: the writer runs to the end
    killed = []
    for n in range(count + 1):
        d = work / str(n) / "ck"
        shutil.copytree(template, d)
        status = run_child(mode, d, n)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            killed.append(n)
        else:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (n, status)
    print(json.dumps({"count": count, "killed": killed, "ops": ops[:count]}))


if __name__ == "__main__":
    main()
