"""``TuneRequest`` and the size vocabulary: population = members, trials = Ray Tune trials,
budget = total member-steps and a cap; renamed flags and keys still work, with one warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from raymeta.cli.main import main
from raymeta.errors import ConfigError, DeprecatedOption
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.tune.request import TuneRequest


def test_sizes_mean_one_thing() -> None:
    r = TuneRequest("m", "sinusoid:0", trials=4, members_per_trial=16, budget=6500)
    assert r.population == 64 and r.total_budget == 6500 and r.steps_per_member == 101
    assert r.steps_per_member * r.population <= r.total_budget  # the budget is a cap
    assert r.report_interval == 26  # a quarter of a member's steps, rounded up
    d = TuneRequest("m", "sinusoid:0", trials=3)
    assert (d.population, d.total_budget, d.steps_per_member) == (3, 300, 100)
    with pytest.raises(ConfigError, match="--interval 50 is more than the 10 steps"):
        TuneRequest("m", "t", trials=2, budget=20, interval=50)  # was capped to 10, silently
    with pytest.raises(ConfigError, match="needs --budget >= 64"):
        TuneRequest("m", "t", trials=4, members_per_trial=16, budget=63)
    fp = r.fingerprint()
    assert fp["trials"] == 4 and fp["members_per_trial"] == 16 and fp["budget"] == 6500
    assert "population" not in fp and "task_options" not in fp


def test_strategy_means_what_it_means_in_sweeps() -> None:
    r = TuneRequest("m", "t", trials=2, strategy="scratch+broad+asha")
    assert (r.init, r.prior, r.scheduler, r.strategy_label) == (
        "scratch",
        "broad",
        "asha",
        "scratch+broad+asha",
    )
    d = TuneRequest("m", "t", trials=2)  # no strategy: auto, resolved against the checkpoint
    assert d.is_auto and d.strategy_label == "auto" and d.fingerprint()["scheduler"] == "auto"
    assert TuneRequest("m", "t", trials=2, strategy="auto").is_auto
    with pytest.raises(ConfigError, match="contradicts --strategy auto"):
        TuneRequest("m", "t", trials=2, strategy="auto", prior="broad")
    r = TuneRequest("m", "t", trials=2, strategy="meta+broad+pbt+refit")
    assert (r.pick, r.strategy_label, r.fingerprint()["pick"]) == (
        "refit",
        "meta+broad+pbt+refit",
        "refit",
    )
    assert "pick" not in TuneRequest("m", "t", trials=2, strategy="meta+broad+pbt").fingerprint()
    one = TuneRequest("m", "t", trials=1, strategy="meta+fixed-default+soup")
    assert one.as_strategy().pick == "soup" and one.strategy_label == "meta+fixed-default+soup"
    assert TuneRequest("m", "t", trials=2, init="scratch").strategy_label == "scratch+learned+pbt"
    with pytest.raises(ConfigError, match="contradicts --strategy"):
        TuneRequest("m", "t", trials=2, strategy="meta+learned+pbt", init="scratch")
    with pytest.raises(ConfigError, match="unknown strategy"):
        TuneRequest("m", "t", trials=2, strategy="meta+learned+hyperband")
    with pytest.raises(ConfigError, match="--scheduler must be one of"):
        TuneRequest("m", "t", trials=2, scheduler="hyperband")
    fixed = TuneRequest("m", "t", trials=1, strategy="meta+fixed-default", budget=30)
    assert fixed.strategy_label == "meta+fixed-default" and fixed.steps_per_member == 30
    with pytest.raises(ConfigError, match="use --trials 1 --members-per-trial 1"):
        TuneRequest("m", "t", trials=2, prior="fixed-default")


def test_a_ray_tune_scheduler_object_from_python() -> None:
    from ray.tune.schedulers import ASHAScheduler

    r = TuneRequest("m", "t", trials=2, scheduler=ASHAScheduler(max_t=3))
    assert r.scheduler_name == "AsyncHyperBandScheduler"
    assert r.strategy_label == "meta+learned+AsyncHyperBandScheduler"
    assert r.fingerprint()["scheduler"] == "AsyncHyperBandScheduler"
    assert r.to_dict()["scheduler"] == "AsyncHyperBandScheduler"


def test_values_are_checked_when_the_request_is_made() -> None:
    for bad, needle in (
        ({"trials": True}, "--trials"),
        ({"trials": 0}, "--trials"),
        ({"trials": 2, "members_per_trial": 2.0}, "--members-per-trial"),
        ({"trials": 2, "cpus_per_trial": float("nan")}, "--cpus-per-trial"),
        ({"trials": 2, "budget": 2.5}, "--budget"),
        ({"trials": 2, "task_options": 5}, "--task-option"),
        ({"trials": 2, "seed": -1}, "--seed"),
    ):
        with pytest.raises(ConfigError, match=needle):
            TuneRequest("m", "t", **bad)  # type: ignore[arg-type]


def test_renamed_python_arguments_warn_and_still_work() -> None:
    with pytest.warns(DeprecatedOption, match="population"):
        r = TuneRequest.from_kwargs(meta="m", task="t", population=3, sweep="mine")
    assert r.trials == 3 and r.label == "mine"
    with pytest.raises(ConfigError, match="not both"):
        TuneRequest.from_kwargs(meta="m", task="t", population=3, trials=2)
    with pytest.raises(ConfigError, match="unknown tune option"):
        TuneRequest.from_kwargs(meta="m", task="t", trials=2, populaton=3)


def test_renamed_flags_warn_on_one_line_and_still_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--meta", str(tmp_path / "nometa"), "--task", "sinusoid:0", "--quiet"]
    argv += ["--out", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([*argv, "--population", "2"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "raymeta: warning: --population is deprecated, use --trials"
    # --population became --trials: the run got as far as reading the checkpoint
    assert len(lines) == 2 and lines[1].startswith("raymeta: error:") and "nometa" in lines[1]
    assert main([*argv, "--population", "2", "--trials", "3"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(argv) == 2
    assert "--trials is required" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_budget_key_is_steps_per_member_with_a_warning(tmp_path: Path) -> None:
    from raymeta.core.checkpoint import save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, MetaTrainer

    meta = save_meta_checkpoint(
        tmp_path / "meta", MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    )
    base = {"meta": [str(meta)], "strategies": ["meta+fixed-default"], "tasks": 1}
    assert parse_sweep({**base, "steps_per_member": 30}).steps_per_member == 30
    with pytest.warns(DeprecatedOption, match="steps_per_member"):
        assert parse_sweep({**base, "budget": 30}).steps_per_member == 30
    with pytest.raises(ConfigError, match="not both"):
        parse_sweep({**base, "budget": 30, "steps_per_member": 30})
    with pytest.raises(ConfigError, match="runs only in raymeta tune"):
        parse_sweep({**base, "strategies": ["meta+learned+pb2"]})


def test_trial_clock_keeps_a_trials_own_steps_in_its_config() -> None:
    """After a PBT exploit Tune has replaced the trial's config with the cloned trial's (clock
    included); the callback, run after the scheduler, puts back the trial's own steps."""
    from ray.tune.experiment import Trial

    from raymeta.orchestration.tune._history import TrialClock
    from raymeta.orchestration.tune.trainable import TRIAL_STEPS

    clock = TrialClock(TRIAL_STEPS)
    trial = Trial("raymeta_test", config={"lr": 0.1}, stub=True)
    clock.on_trial_result(0, [trial], trial, {"trial_step": 25})
    assert trial.config == {"lr": 0.1, TRIAL_STEPS: 25}
    trial.set_config({"lr": 0.3, TRIAL_STEPS: 75})  # what PBT's exploit does (source's config)
    clock.on_trial_result(1, [trial], trial, {"trial_step": 50})
    assert trial.config == {"lr": 0.3, TRIAL_STEPS: 50}
    assert json.loads(json.dumps(trial.config))[TRIAL_STEPS] == 50
