"""`raymeta tune --deterministic`: the same request into a fresh --out repeats the run exactly
(best config, val and test loss, model bytes, every exploit), on the shared real Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.errors import ConfigError
from raymeta.finetune import fit_priors
from raymeta.orchestration.tune.request import TuneRequest
from raymeta.orchestration.tune.trainable import TRIAL_STEPS


@pytest.fixture(scope="module")
def meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly meta-trained sinusoid checkpoint with fitted priors (no Ray needed)."""
    path = tmp_path_factory.mktemp("repro-meta") / "meta"
    tr = meta_train(MetaTrainConfig(steps=10, meta_batch=4, val_tasks=2, seed=0))
    save_meta_checkpoint(path, tr.to_checkpoint())
    priors = fit_priors(
        load_meta_checkpoint(path), n_tasks=2, n_configs=6, max_steps=10, portfolio_size=4
    )
    write_priors(path, priors.to_dict())
    return path


def _n(trial_id: Any) -> str:
    """A trial id without Tune's per-run random prefix (``ab12c_00003`` -> ``00003``)."""
    return str(trial_id).rsplit("_", 1)[-1]


def _decisions(out: Path, rep: dict[str, Any]) -> dict[str, Any]:
    """Everything a rerun must repeat: the best member, its losses and bytes, the trial-level
    exploits and restores (as sets: reports of one round arrive in any order), the in-trial
    member exploits, and Tune's own PBT log (who cloned whom into what config)."""
    lineage = sorted(
        json.dumps(
            {**{k: v for k, v in e.items() if k != "wall_time"}, "trial": _n(e["trial"])}
            | ({"source": _n(e["source"])} if "source" in e else {}),
            sort_keys=True,
        )
        for e in rep["lineage"]
    )
    pbt = [
        (r["target"], r["source"], {k: v for k, v in r["new"].items() if k != TRIAL_STEPS})
        for r in rep["pbt_global"]
    ]
    return {
        "best": {**rep["best"], "trial": _n(rep["best"]["trial"])},
        "model_sha256": rep["model_sha256"],
        "member_steps": rep["member_steps"],
        "lineage": lineage,
        "member_exploits": rep["member_exploits"],
        "pbt_global": pbt,
        "report_file": json.loads((out / "report.json").read_text())["best"] == rep["best"],
    }


def _twice(meta: Path, tmp_path: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from raymeta.orchestration.tune.run import run_tune

    runs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        rep = run_tune(
            meta=meta,
            task="sinusoid:2",
            trials=4,
            members_per_trial=4,  # in-trial exploits need 4 (``TRIAL_RULE``)
            budget=4 * 4 * 20,
            interval=5,
            seed=5,
            out=out,
            verbose=0,
            deterministic=True,
            **kw,
        )
        assert json.loads((out / "run.json").read_text())["fingerprint"]["deterministic"] is True
        runs.append(_decisions(out, rep))
    return runs[0], runs[1]


@pytest.mark.ray
def test_deterministic_pbt_repeats_the_run_exactly(
    ray_session: None, meta: Path, tmp_path: Path
) -> None:
    a, b = _twice(meta, tmp_path, scheduler="pbt")  # two trials at a time on the 2-CPU Ray
    exploits = [e for e in a["lineage"] if json.loads(e)["kind"] == "exploit"]
    assert len(exploits) >= 2 and len(a["pbt_global"]) == len(exploits)  # PBT did act
    assert a["member_exploits"] > 0
    assert a["report_file"] and b["report_file"]
    # bitwise: == on floats, the same model bytes
    assert a["best"]["test_loss"] == b["best"]["test_loss"]
    assert a["best"]["val_loss"] == b["best"]["val_loss"]
    assert a["best"]["config"] == b["best"]["config"]
    assert a == b


@pytest.mark.slow
@pytest.mark.ray
def test_deterministic_pbt_with_every_trial_at_once(
    ray_session: None, meta: Path, tmp_path: Path
) -> None:
    """All four trials run at once (half a CPU each): asynchronous PBT's decisions would then
    depend on which trial reports first (a rerun without --deterministic differs here)."""
    a, b = _twice(meta, tmp_path, scheduler="pbt", cpus_per_trial=0.5)
    assert a == b


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("scheduler", ["pb2", "asha", "random"])
def test_deterministic_other_schedulers_repeat_the_run(
    ray_session: None, meta: Path, tmp_path: Path, scheduler: str
) -> None:
    a, b = _twice(meta, tmp_path, scheduler=scheduler)
    assert a == b


def test_deterministic_is_checked_and_fingerprinted_only_when_on(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(meta=tmp_path / "m", task="sinusoid:1", trials=4, out=tmp_path)
    # off (the default): run.json files written before the flag existed still match
    assert "deterministic" not in TuneRequest(**kw).fingerprint()
    assert TuneRequest(**kw, deterministic=True).fingerprint()["deterministic"] is True
    with pytest.raises(ConfigError, match="--deterministic must be true or false"):
        TuneRequest(**kw, deterministic="yes")  # type: ignore[arg-type]


def test_deterministic_flag_reaches_the_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import raymeta.orchestration.tune.run as run
    from raymeta.cli.main import main

    seen: list[TuneRequest] = []

    def fake_run_tune(request: TuneRequest, verbose: int = 1) -> dict[str, Any]:
        seen.append(request)
        raise SystemExit(0)

    monkeypatch.setattr(run, "run_tune", fake_run_tune)
    base = ["tune", "--meta", str(tmp_path), "--task", "sinusoid:1", "--trials", "4"]
    for flags, want in (([], False), (["--deterministic"], True)):
        with pytest.raises(SystemExit):
            main([*base, "--out", str(tmp_path / f"o{want}"), *flags])
        assert seen[-1].deterministic is want
