"""Three more inputs that were accepted silently are one line and exit 2, before any work.

The contract of ``test_bad_inputs.py`` (``run_bad``: exit 2, one ``raymeta: error:`` line, no
traceback, the directory unchanged), for values that each flag accepted on its own but that
mean nothing together with another flag:

* ``priors fit --select-interval N`` above ``--max-steps``: every selection run trains
  ``--max-steps`` steps and clamped the interval to it, while ``priors.json`` recorded N;
* ``meta-train --first-order`` with reptile or pretrain, which never differentiate through an
  inner loop (fomaml already is first-order: the flag stays a harmless no-op there);
* ``meta-train --multi-step-loss N`` above ``--steps`` (the annealing stopped part-way) and
  ``--first-order-until N`` at or above ``--steps`` (the run never turned second-order).

The Python API (``PriorFitConfig`` / ``fit_priors``, ``MetaTrainConfig.validate``) refuses the
same values with the same words; the values just inside each limit stay valid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import MT, MT_RAY, PF, run_bad  # tests/ is on sys.path

from raymeta.errors import ConfigError


def _api_error(call: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------ priors fit: --select-interval > --max-steps
@pytest.mark.parametrize(
    "extra",
    [
        ["--max-steps", "10", "--select-interval", "11"],
        ["--select-interval", "101"],  # above the default --max-steps (100)
        ["--max-steps", "4", "--select-interval", "1000", "--objective", "anytime"],
    ],
)
def test_priors_fit_select_interval_above_max_steps(
    extra: list[str], ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    line = run_bad([*PF, *extra], tmp_path, capsys)
    assert "select-interval" in line and "is more than max-steps" in line
    assert not (tmp_path / "ckpt" / "priors.json").exists()


def test_priors_fit_select_interval_in_a_config_file(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    (tmp_path / "c.yaml").write_text("max_steps: 8\nselect_interval: 9\n")
    line = run_bad([*PF, "--config", "c.yaml"], tmp_path, capsys)
    assert "select-interval 9 is more than max-steps 8" in line


def test_priors_fit_select_interval_in_the_python_api(ckpt_dir: Path) -> None:
    from raymeta import PriorFitConfig, fit_priors, load_meta_checkpoint

    msg = _api_error(lambda: PriorFitConfig(max_steps=10, select_interval=11))
    assert msg.startswith("priors: select-interval 11 is more than max-steps 10")
    ckpt = load_meta_checkpoint(ckpt_dir)
    # fields given to fit_priors, or overriding a config's, are checked before any fine-tuning
    _api_error(lambda: fit_priors(ckpt, n_tasks=2, n_configs=4, max_steps=4, select_interval=5))
    ok = PriorFitConfig(max_steps=10, select_interval=10)  # one evaluation, at the end: valid
    _api_error(lambda: fit_priors(ckpt, ok, max_steps=9))
    assert PriorFitConfig(max_steps=10).select_interval is None  # the default: a quarter


# ---------------------------------------------- meta-train: --first-order with reptile/pretrain
@pytest.mark.parametrize("algo", ["reptile", "pretrain"])
@pytest.mark.parametrize("ray", [False, True])
def test_first_order_needs_second_order_terms(
    algo: str, ray: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = MT_RAY if ray else MT  # the Ray Train path is refused before Ray starts
    line = run_bad([*base, "--out", "out", "--algo", algo, "--first-order"], tmp_path, capsys)
    assert "first-order drops the second-order terms" in line and f"got {algo}" in line


def test_first_order_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("algo: reptile\nfirst_order: true\n")
    line = run_bad([*MT, "--out", "out", "--config", "c.yaml"], tmp_path, capsys)
    assert "first-order" in line and "got reptile" in line


@pytest.mark.parametrize(
    "extra, match",
    [
        # a candidate inheriting the run's --first-order: named, with the two ways out
        (
            ["--first-order", "--candidate", "a", "--candidate", "r algo=reptile"],
            "candidate 'r' (reptile) inherits --first-order",
        ),
        (["--candidate", "p algo=pretrain first_order=true"], "candidate 'p': first_order=true"),
    ],
)
def test_first_order_of_a_candidate(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*MT, "--out", "out", *extra], tmp_path, capsys)
    assert match in line


def test_first_order_in_the_python_api() -> None:
    from raymeta import MetaTrainConfig

    for algo in ("reptile", "pretrain"):
        msg = _api_error(MetaTrainConfig(algo=algo, first_order=True).validate)
        assert f"got {algo}, which has none" in msg
    msg = _api_error(
        lambda: MetaTrainConfig(first_order=True, candidates=["a", "r algo=reptile"]).validate()
    )
    assert "candidate 'r' (reptile) inherits" in msg
    # still valid: a second-order algorithm; fomaml (already first-order, a no-op); the default
    # first_order=False that meta.json records for every reptile / pretrain run; a candidate
    # that opts out of the run's --first-order
    for algo in ("maml", "fomaml", "metasgd", "anil"):
        MetaTrainConfig(algo=algo, first_order=True).validate()
    for algo in ("reptile", "pretrain"):
        cfg = MetaTrainConfig(algo=algo, first_order=False).validate()
        MetaTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).validate()
    MetaTrainConfig(
        first_order=True, candidates=["a", "r algo=reptile first_order=false"]
    ).validate()


def test_a_stored_reptile_first_order_checkpoint_still_loads(
    ckpt_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint an earlier raymeta wrote with ``--algo reptile --first-order`` (accepted
    then) still loads: the check is on new runs' configs, not on stored ones."""
    from raymeta import load_meta_checkpoint

    shutil.copytree(ckpt_dir, tmp_path / "ck")
    meta_file = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"].update(algo="reptile", first_order=True)
    meta_file.write_text(json.dumps(meta))
    assert load_meta_checkpoint(tmp_path / "ck").config["first_order"] is True


# ------------------------------- meta-train: --multi-step-loss / --first-order-until vs --steps
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--multi-step-loss", "3"], "multi-step-loss 3 must be at most steps 2"),
        (["--multi-step-loss", "1000000"], "multi-step-loss 1000000 must be at most steps 2"),
        (["--first-order-until", "2"], "first-order-until 2 must be below steps 2"),
        (["--first-order-until", "50"], "first-order-until 50 must be below steps 2"),
    ],
)
@pytest.mark.parametrize("ray", [False, True])
def test_mamlpp_lengths_beyond_the_run(
    extra: list[str], match: str, ray: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = MT_RAY if ray else MT  # --steps 2
    line = run_bad([*base, "--out", "out", "--inner-steps", "2", *extra], tmp_path, capsys)
    assert match in line


def test_mamlpp_lengths_in_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--steps`` on the command line wins over the file's, and the check sees the result."""
    (tmp_path / "c.yaml").write_text("steps: 100\nmulti_step_loss: 50\n")
    line = run_bad([*MT, "--out", "out", "--config", "c.yaml"], tmp_path, capsys)
    assert "multi-step-loss 50 must be at most steps 2" in line


def test_mamlpp_lengths_in_the_python_api() -> None:
    from raymeta import MetaTrainConfig

    msg = _api_error(lambda: MetaTrainConfig(steps=10, multi_step_loss=11).validate())
    assert msg.startswith("multi-step-loss 11 must be at most steps 10")
    msg = _api_error(lambda: MetaTrainConfig(steps=10, first_order_until=10).validate())
    assert msg.startswith("first-order-until 10 must be below steps 10")
    # with candidates too (steps is the run's, shared by every candidate)
    _api_error(
        lambda: MetaTrainConfig(steps=5, first_order_until=7, candidates=["a", "b"]).validate()
    )
    # still valid: annealing over the whole run; second-order from the last step on
    MetaTrainConfig(steps=10, multi_step_loss=10, inner_steps=2).validate()
    MetaTrainConfig(steps=10, first_order_until=9).validate()
    MetaTrainConfig(steps=1, multi_step_loss=1).validate()
