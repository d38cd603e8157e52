"""A user's own model and family, in a module outside raymeta that only the driver's sys.path
finds, through every Ray path: Ray Train meta-training on 2 workers (a meta-learned and a
pretrained-from-file candidate), priors over both candidates, a PBT tune with packed members,
and a sweep. A bug in the user's model that first shows inside a Ray Train worker is one line
naming it, exit 2, with nothing written."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint, write_priors
from raymeta.core.models import ModelSpec, build_model
from raymeta.core.train import MetaTrainConfig
from raymeta.finetune import fit_priors
from raymeta.results import read_results

pytestmark = pytest.mark.ray

PLUGIN = '''
import torch
from torch import nn
from raymeta.tasks import Task, TaskBatch, TaskFamily


class Net(nn.Module):
    def __init__(self, input_shape, output_dim, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], width), nn.GroupNorm(1, width), nn.Tanh())
        self.head = nn.Linear(width, output_dim)

    def forward(self, x):
        return self.head(self.body(x))


class LateBug(Net):
    calls = 0

    def forward(self, x):
        LateBug.calls += 1
        if LateBug.calls > 30:  # the driver's preflight passes; a worker meets it later
            raise KeyError("feature 'age' missing")
        return super().forward(x)


class Lines(TaskFamily):
    """y = a x + b on 2 inputs; the split is encoded in the sign of b's fraction."""

    name = "lines"
    kind = "regression"
    input_shape = (2,)
    output_dim = 1

    def __init__(self, shots=6, queries=6):
        self.shots, self.queries = shots, queries

    def options(self):
        return {"shots": self.shots, "queries": self.queries}

    def _draw(self, split, n, sizes, g):
        a = torch.randn(n, 2, 1, generator=g)
        b = torch.rand(n, 1, 1, generator=g) + {"train": 0, "val": 2, "test": 4}[split]
        xs = [torch.randn(n, s, 2, generator=g) for s in sizes]
        return [(x, x @ a + b) for x in xs]

    def sample(self, split, n_tasks, generator):
        (xs, ys), (xq, yq) = self._draw(split, n_tasks, [self.shots, self.queries], generator)
        return TaskBatch(xs, ys, xq, yq)

    def task(self, split, index):
        g = torch.Generator().manual_seed(1000 * index + len(split))
        (xt, yt), (xv, yv), (xe, ye) = self._draw(split, 1, [8, 8, 16], g)
        return Task(f"lines:{split}:{index}", xt[0], yt[0], xv[0], yv[0], xe[0], ye[0],
                    "regression", 1)
'''


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"rayplug_{uuid.uuid4().hex[:8]}"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))  # the driver's path only
    return name


def test_own_model_and_family_through_train_priors_tune_and_sweep(
    ray_session: None, plugin: str, tmp_path: Path
) -> None:
    from raymeta.orchestration.meta_train.ray_train import run_meta_train
    from raymeta.orchestration.sweep.config import parse_sweep
    from raymeta.orchestration.sweep.run import run_sweep
    from raymeta.orchestration.tune.run import run_tune

    mine = build_model(ModelSpec(f"{plugin}:Net", (2,), 1, {"width": 8}))
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    cfg = MetaTrainConfig(
        family=f"{plugin}:Lines",
        model=f"{plugin}:Net",
        steps=6,
        meta_batch=4,
        val_tasks=4,
        val_every=3,
        candidates=["meta", f"mine weights={tmp_path / 'mine.pt'}"],
    )
    meta = tmp_path / "meta"
    ck = run_meta_train(cfg, meta, workers=2, progress=False)
    assert list(ck.candidates) == ["meta", "mine"]
    stored = json.loads((meta / "meta.json").read_text())
    assert stored["family"]["name"] == f"{plugin}:Lines"
    assert stored["candidates"]["meta"]["model"]["name"] == f"{plugin}:Net"
    assert ck.candidates["meta"].info["metrics"]["step"] == 6

    priors = fit_priors(ck, n_tasks=3, n_configs=8, max_steps=10, portfolio_size=2, select_tasks=0)
    write_priors(meta, priors.to_dict())
    probs = load_meta_checkpoint(meta).priors["model_probs"]  # type: ignore[index]
    assert set(probs) == {"meta", "mine"} and abs(sum(probs.values()) - 1) < 1e-6

    rep = run_tune(
        meta=meta,
        task=f"{plugin}:Lines:1",
        trials=2,
        members_per_trial=2,
        budget=4 * 20,
        interval=5,
        out=tmp_path / "tune",
        verbose=0,
    )
    assert all(t["error"] is None for t in rep["trials"])
    assert rep["best"]["config"]["model"] in ("meta", "mine")
    assert rep["candidate"] == rep["best"]["config"]["model"]  # the report names the winner
    assert (tmp_path / "tune" / "best_model.pt").is_file()

    sweep = parse_sweep(
        {
            "meta": [str(meta)],
            "strategies": ["meta+learned+pbt"],
            "tasks": [0],
            "population": 4,
            "steps_per_member": 10,
            "interval": 5,
        }
    )
    run_sweep(sweep, tmp_path / "results", progress=False)
    rows = read_results(tmp_path / "results")
    assert len(rows) > 0 and set(rows.column("task").to_pylist()) == {"lines:test:0"}


def test_a_bug_inside_a_worker_is_one_line_naming_the_model(
    ray_session: None, plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "meta"
    argv = ["meta-train", "--family", f"{plugin}:Lines", "--workers", "2", "--out", str(out)]
    argv += ["--steps", "20", "--meta-batch", "2", "--val-every", "20", "--val-tasks", "2"]
    assert main([*argv, "--model", f"{plugin}:LateBug", "--max-failures", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'LateBug' raised KeyError in meta-training step" in err[0], err
    assert "feature 'age' missing" in err[0] and "rerunning the same command will fail" in err[0]
    assert not out.exists()
    assert main([*argv, "--model", f"{plugin}:NoSuchNet"]) == 2
    assert f"{plugin!r} has no 'NoSuchNet'" in capsys.readouterr().err
    assert not out.exists()
