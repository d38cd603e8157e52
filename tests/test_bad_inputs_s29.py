"""Bad inputs of round 29: one ``raymeta: error:`` line and exit 2 before any work, raymeta's
own errors from the Python API, and good inputs not refused.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). No
case starts Ray: each is refused before any work, and the work a command would start is
replaced, where a regression could reach it, by a function that fails the test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from _tune_run import write_tune_run  # tests/ is on sys.path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import run_bad, run_cli  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.cli.main import build_parser, main

FROM_CONFIG = "(give {} on the command line or in --config FILE.yaml)"


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the bad input was not refused before the work started")


# ------------------------------------- A4: one wording for a missing required option everywhere
@pytest.mark.parametrize(
    ("argv", "where", "missing"),
    [
        (["tune"], "tune", "--meta, --task, --trials and --out are"),
        (["tune", "--meta", "m", "--task", "sinusoid:0", "--out", "o"], "tune", "--trials is"),
        (["meta-train", "--local", "--steps", "1"], "meta-train", "--out is"),
        (["meta-train", "--steps", "1"], "meta-train", "--out is"),
        (["priors", "fit", "--tasks", "2"], "priors fit", "--meta is"),
        (["priors", "show"], "priors show", "--meta is"),
        # was: "data make-sinusoid: give --out OUT.parquet"
        (["data", "make-sinusoid", "--tasks", "3"], "data make-sinusoid", "--out is"),
    ],
)
def test_missing_required_option_has_the_common_wording(
    argv: list[str], where: str, missing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "--trials is required", "--out is required (the meta-checkpoint directory to
    write)", "--meta DIR is required": each command its own words, one option at a time."""
    them = "it" if missing.endswith(" is") else "them"
    line = run_bad(argv, tmp_path, capsys)
    assert line == f"raymeta: error: {where}: {missing} required {FROM_CONFIG.format(them)}"


def test_required_options_from_config_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Values given only in ``--config`` (and ``--population``, the old name of ``--trials``)
    get past the required check to the command's own checks: here the missing checkpoint."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text("meta: nometa\ntask: sinusoid:0\ntrials: 2\nout: out\nquiet: true\n")
    line = run_bad(["tune", "--config", str(cfg)], tmp_path, capsys)
    assert "nometa" in line and "required" not in line, line
    cfg.write_text("meta: nometa\ntask: sinusoid:0\npopulation: 2\nout: out\nquiet: true\n")
    rc, err = run_cli(["tune", "--config", str(cfg)], capsys)
    assert rc == 2 and "nometa" in err[-1] and "required" not in err[-1], err
    cfg.write_text("meta: nometa\n")
    for action in ("show", "fit"):
        line = run_bad(["priors", action, "--config", str(cfg)], tmp_path, capsys)
        assert "nometa" in line and "required" not in line, line
    cfg.write_text(f"out: {tmp_path / 'file' / 'o'}\n")
    (tmp_path / "file").write_text("x")
    line = run_bad(["meta-train", "--local", "--config", str(cfg)], tmp_path, capsys)
    assert "cannot write --out" in line, line
    # make-sinusoid's --out from the file, and from its old positional spelling
    cfg.write_text(f"tasks: 3\nout: {tmp_path / 's.parquet'}\n")
    assert run_cli(["data", "make-sinusoid", "--config", str(cfg)], capsys)[0] == 0
    argv = ["data", "make-sinusoid", str(tmp_path / "s2.parquet"), "--tasks", "3"]
    assert run_cli(argv, capsys)[0] == 0
    assert (tmp_path / "s.parquet").is_file() and (tmp_path / "s2.parquet").is_file()


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["tune"], ["--meta", "--task", "--trials", "--out"]),
        (["meta-train"], ["--out"]),
        (["priors", "fit"], ["--meta"]),
        (["priors", "show"], ["--meta"]),
        (["data", "make-sinusoid"], ["--out"]),
    ],
)
def test_help_still_shows_them_required(command: list[str], flags: list[str]) -> None:
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]  # type: ignore[attr-defined]
    usage = " ".join(parser.format_usage().split())
    for flag in flags:
        act = parser._option_string_actions[flag]
        assert f" {flag} {act.metavar or act.dest.upper()}" in usage, usage
        assert f"[{flag} " not in usage, usage
        assert (act.help or "").endswith("(required)")
        assert not act.required  # argparse leaves it to check_required (after --config)


# ------------------------------- A1: a scheduler with a fixed prior is refused, never dropped
TU = ["tune", "--meta", "nometa", "--task", "sinusoid:0", "--trials", "1", "--out", "o"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--strategy", "meta+fixed-default+pbt"], "fixed-default takes no scheduler, pbt"),
        (["--strategy", "meta+fixed-head+asha+refit"], "write meta+fixed-head+refit"),
        (["--strategy", "scratch+fixed-default+pb2"], "write scratch+fixed-default"),
        (
            ["--prior", "fixed-head", "--scheduler", "pbt"],
            "--scheduler pbt with --prior fixed-head",
        ),
        (
            ["--strategy", "meta+fixed-default", "--scheduler", "asha"],
            "--scheduler asha with --strategy meta+fixed-default",
        ),
        # was: --init scratch silently dropped, the member started from the meta-init
        (["--strategy", "meta+fixed-default", "--init", "scratch"], "--init scratch contradicts"),
    ],
)
def test_tune_refuses_a_scheduler_a_fixed_prior_ignores(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: accepted, and the one-member run ignored the scheduler (and its label dropped it)."""
    line = run_bad([*TU, *extra], tmp_path, capsys)
    assert needle in line, line
    if "--scheduler" in needle or "takes no scheduler" in needle:
        assert "INIT+learned+SCHEDULER, INIT+broad+SCHEDULER" in line, line


def test_strategy_parse_refuses_and_the_labels_raymeta_wrote_read_back() -> None:
    from raymeta import ConfigError, Strategy
    from raymeta.orchestration.tune.request import TuneRequest

    for bad in ("meta+fixed-default+pbt", "meta+fixed-default+pbt+refit", "meta+fixed-head+pb2"):
        with pytest.raises(ConfigError, match="takes no scheduler"):
            Strategy.parse(bad)
    with pytest.raises(ConfigError, match="takes no scheduler"):
        Strategy("meta", "fixed-default", "asha")  # the API's constructor as well
    assert Strategy("meta", "fixed-default").scheduler == "random"
    assert Strategy("meta", "learned").scheduler == "pbt"
    # raymeta tune labelled --strategy meta+fixed-head runs meta+fixed-head+random: still read
    assert Strategy.parse("meta+fixed-head+random") == Strategy.parse("meta+fixed-head")
    assert Strategy.parse("meta+fixed-head+random").name == "meta+fixed-head"
    # and --init meta --prior fixed-head runs meta+fixed-head+pbt: from_label reads raymeta's own
    assert Strategy.from_label("meta+fixed-head+pbt") == Strategy("meta", "fixed-head")
    assert Strategy.from_label("scratch+broad+asha+soup").name == "scratch+broad+asha+soup"
    with pytest.raises(ConfigError, match="unknown strategy"):
        Strategy.from_label("meta+fixed-head+bogus")
    # tune now labels a fixed strategy as sweeps do, however it was given
    for kw in ({"strategy": "meta+fixed-head+random"}, {"prior": "fixed-head"}):
        r = TuneRequest("m", "sinusoid:0", trials=1, **kw)  # type: ignore[arg-type]
        assert r.strategy_label == "meta+fixed-head" and r.scheduler == "random"
        assert dataclasses.replace(r, budget=7).strategy_label == "meta+fixed-head"


def test_tune_refuses_a_scheduler_object_with_a_fixed_prior() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from raymeta import ConfigError
    from raymeta.orchestration.tune.request import TuneRequest

    with pytest.raises(ConfigError, match="object AsyncHyperBandScheduler with --prior"):
        TuneRequest("m", "t", trials=1, prior="fixed-default", scheduler=ASHAScheduler(max_t=3))


def test_sweep_refuses_a_scheduler_with_a_fixed_prior(ckpt_dir: Path) -> None:
    from raymeta import ConfigError, parse_sweep

    base = {"meta": [str(ckpt_dir)], "tasks": 1}
    with pytest.raises(ConfigError, match="fixed-default takes no scheduler"):
        parse_sweep({**base, "strategies": ["meta+learned+pbt", "meta+fixed-default+pbt"]})
    ok = parse_sweep({**base, "strategies": ["meta+fixed-head+random", "meta+fixed-default"]})
    assert ok.strategies == ("meta+fixed-head", "meta+fixed-default")


# ------------------------------------------- A3: run_population refuses unknown config keys
@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"lerning_rate": 0.1}, "config 0: unknown key(s) 'lerning_rate'"),
        ({"lr": 0.1, "LR": 0.2}, "unknown key(s) 'LR'"),
        ({"lr": 0.1, 3: 1}, "unknown key(s) 3"),
    ],
)
def test_run_population_refuses_an_unknown_config_key(
    config: dict[Any, Any], needle: str, ckpt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the key was ignored and the member trained at the default learning rate."""
    import raymeta.finetune.run
    from raymeta import ConfigError, make_family, run_population

    monkeypatch.setattr(raymeta.finetune.run, "initial_state", _no_work)
    task = make_family("sinusoid").task("test", 0)
    good = {"lr": 0.01, "model": "mlp", "optimizer": "adam", "adapt": "head"}
    with pytest.raises(ConfigError) as err:
        run_population(
            task, ckpt.candidates, [good, config], init="meta", steps=2, interval=1, seed=0
        )
    msg = str(err.value).replace("config 1", "config 0")
    assert needle in msg and "a config takes lr, optimizer, weight_decay, steps" in msg, msg
    assert "model" in msg


def test_run_population_takes_every_vocabulary_key(ckpt: Any) -> None:
    """``model`` and the rest of the vocabulary are not extras: a config may name them all."""
    from raymeta import make_family, run_population

    task = make_family("sinusoid").task("test", 0)
    full = {
        "lr": 0.01,
        "optimizer": "sgd",
        "weight_decay": 0.0,
        "steps": 2,
        "batch_size": 3,
        "adapt": "all",
        "model": next(iter(ckpt.candidates)),
    }
    res = run_population(task, ckpt.candidates, [full], init="meta", steps=2, interval=1, seed=0)
    assert res.best.config["batch_size"] == 3


# ------------------------------- A2: raymeta.write_priors stores only priors a tune can use
@pytest.fixture(scope="module")
def fitted(ckpt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the conftest checkpoint with tiny fitted priors (strategy selection too)."""
    import shutil

    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.finetune import fit_priors, write_priors

    d = tmp_path_factory.mktemp("s29") / "ckpt"
    shutil.copytree(ckpt_dir, d)
    pr = fit_priors(
        load_meta_checkpoint(d),
        n_tasks=2,
        n_configs=4,
        rounds=1,
        refine_repeats=0,
        max_steps=4,
        select_tasks=2,
        select_population=2,
    )
    write_priors(d, pr)  # a Priors object is taken as it is
    return d


def _other_space_priors(**space: Any) -> dict[str, Any]:
    """Priors over a broad space changed by ``space`` (name -> Param), as a mapping."""
    from raymeta import Priors, broad_space
    from raymeta.priors import SearchSpace, broad_prior
    from raymeta.priors.artifact import VERSION

    base = broad_space(["mlp"], max_batch=5, max_steps=4)
    sp = SearchSpace([space.get(p.name, p) for p in base])
    models = space["model"].choices if "model" in space else ("mlp",)
    probs = {str(m): 1.0 / len(models) for m in models}
    return Priors(VERSION, sp, broad_prior(sp), [], probs).to_dict()


def _bad_priors(good: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    from raymeta.priors import Categorical, Float

    sel = good["selection"]
    return {
        "not priors": ({"which": 1}, "priors is not a raymeta priors file"),
        "a future version": (good | {"version": 7}, "priors has version 7"),
        "no space": (
            {k: v for k, v in good.items() if k != "space"},
            "it has no 'space' entry",
        ),
        # was: a bare ValueError from load_priors (float('x')) once written
        "a probability float() cannot read": (
            good | {"model_probs": {"mlp": "x"}},
            "could not convert string to float",
        ),
        "a probability above 1": (
            good | {"model_probs": {"mlp": 2.0}},
            "model_probs['mlp'] must be a probability",
        ),
        "another checkpoint's model": (
            _other_space_priors(model=Categorical("model", ("wide",))),
            "names model 'wide', not a candidate of this meta-checkpoint (mlp)",
        ),
        "an optimizer members cannot run": (
            _other_space_priors(optimizer=Categorical("optimizer", ("sgd", "rmsprop"))),
            "'optimizer': fine-tuning config: optimizer='rmsprop' is not one of sgd, adam",
        ),
        "a learning rate of 0": (
            _other_space_priors(lr=Float("lr", 0.0, 1.0)),
            "lr=0.0 must be > 0",
        ),
        "an unreadable strategy choice": (
            good | {"selection": {**sel, "chosen": "meta+fixed-default+bogus"}},
            "selection's chosen strategy 'meta+fixed-default+bogus'",
        ),
        "info not a mapping": (good | {"info": [1, 2]}, "its 'info' is not a mapping"),
    }


def test_write_priors_refuses_what_a_tune_could_not_use(fitted: Path) -> None:
    """Was: any non-empty JSON mapping was stored (checksummed), and every later tune,
    sweep or ``priors show`` of the checkpoint failed, some inside a Ray trial."""
    import raymeta
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.priors import Float, SearchSpace, broad_prior
    from raymeta.priors.artifact import VERSION

    before = (fitted / "meta.json").read_bytes()
    good = raymeta.load_priors(load_meta_checkpoint(fitted)).to_dict()
    cases = _bad_priors(good)
    # a hyperparameter no member reads (the broad space has none: a space of its own)
    sp = SearchSpace([*raymeta.broad_space(["mlp"], 5, 4), Float("momentum", 0.0, 0.9)])
    cases["a hyperparameter outside the vocabulary"] = (
        raymeta.Priors(VERSION, sp, broad_prior(sp), [], {"mlp": 1.0}).to_dict(),
        "'momentum' is not a fine-tuning hyperparameter (known: lr, optimizer",
    )
    for what, (bad, needle) in cases.items():
        with pytest.raises(raymeta.ConfigError) as err:
            raymeta.write_priors(fitted, bad)
        assert needle in str(err.value), (what, str(err.value))
        assert "\n" not in str(err.value)
    assert (fitted / "meta.json").read_bytes() == before, "a refused write changed the checkpoint"
    raymeta.write_priors(fitted, good)  # the good priors still go in
    assert raymeta.load_priors(load_meta_checkpoint(fitted)).to_dict() == good


# ------------------ B: an existing --out that is a device, FIFO or socket is never replaced
@pytest.fixture()
def not_files(tmp_path: Path) -> list[str]:
    """A FIFO, a unix socket and a symlink to the FIFO (never a real device: were the check
    to regress, a test as root would replace it)."""
    import os
    import socket

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    (tmp_path / "link").symlink_to(fifo)
    return [str(fifo), str(sock), str(tmp_path / "link")]


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "make-sinusoid", "--tasks", "3", "--overwrite"],
        [
            "data",
            "convert",
            "--input",
            "x.parquet",
            "--feature-columns",
            "a",
            "--target-column",
            "y",
        ]
        + ["--overwrite"],
        ["bench", "engine", "--smoke-test"],  # its --out replaced an existing file always
    ],
)
def test_an_output_file_that_is_not_a_regular_file_is_refused(
    argv: list[str], not_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: with --overwrite the output was written beside the path and renamed over it: as
    root, ``raymeta predict --out /dev/null --overwrite`` replaced /dev/null by a Parquet file
    (and ``bench ... --out /dev/null`` needed no --overwrite at all)."""
    import os
    import stat

    kinds = [os.lstat(p).st_mode for p in not_files]
    for out in not_files:
        line = run_bad([*argv, "--out", out], tmp_path, capsys)
        assert f"--out {out} exists and is not a regular file" in line, line
    assert [os.lstat(p).st_mode for p in not_files] == kinds
    assert stat.S_ISFIFO(kinds[0]) and stat.S_ISSOCK(kinds[1]) and stat.S_ISLNK(kinds[2])


def test_predict_and_its_api_refuse_a_fifo_out(
    not_files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import raymeta

    argv = ["predict", "--run", "r", "--input", "x.parquet", "--out", not_files[0], "--overwrite"]
    assert "is not a regular file" in run_bad(argv, tmp_path, capsys)
    with pytest.raises(raymeta.ConfigError, match="is not a regular file"):
        raymeta.predict(tmp_path, tmp_path / "x.parquet", not_files[0], overwrite=True)


# ------------------------------------------- B: the --config loader and number-like values
@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small results dataset (``report`` reads it in well under a second)."""
    from raymeta.results import ResultSink
    from raymeta.results.synthetic import synthetic_rows

    res = tmp_path_factory.mktemp("s29res") / "results"
    rows = synthetic_rows(sweep="demo", tasks=("a", "b", "c"), seeds=(0, 1))
    ResultSink(res, "demo").append(rows, "all")
    return res


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # was: "internal error: OverflowError: int too large to convert to float", exit 1
        ("target: " + "9" * 400 + "\n", "'target': value must be a finite number"),
        ("target: .nan\n", "'target': value must be a finite number"),
    ],
)
def test_a_config_number_a_float_cannot_hold_is_one_line(
    text: str, needle: str, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    line = run_bad(["report", str(results), "--config", str(cfg)], tmp_path, capsys)
    assert needle in line, line


@pytest.mark.parametrize("value", ["", " ", "\t"])
@pytest.mark.parametrize("argv", [["report", "RES"], ["bench", "engine", "--smoke-test"]])
def test_an_empty_config_path_is_refused(
    value: str,
    argv: list[str],
    results: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Was: ``--config ""`` (an unset ``$CFG``) ran on the defaults without a word."""
    argv = [str(results) if a == "RES" else a for a in argv]
    line = run_bad([*argv, "--config", value], tmp_path, capsys)
    assert "argument --config: expected a path" in line, line


@pytest.mark.parametrize("value", ["-1e-3", "-2.5E+2", "-7", "-.5", "-1.", "-1e3"])
def test_a_negative_number_in_scientific_notation_is_a_value(
    value: str, results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ``report --target -1e-3`` refused as "expected one argument" (argparse took only
    -5 and -.5 for negative numbers); a good input must not be refused."""
    rc, err = run_cli(["report", str(results), "--target", value, "--format", "json"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "RES", "--target", "-inf"], "--target: value must be a finite number"),
        (["report", "RES", "--target", "-nan"], "--target: value must be a finite number"),
        (["meta-train", "--local", "--outer-lr", "-1e-3"], "--outer-lr: value must be > 0"),
    ],
)
def test_a_bad_negative_value_gets_its_options_own_message(
    argv: list[str], needle: str, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "expected one argument", which named no fault in the value."""
    argv = [str(results) if a == "RES" else a for a in argv]
    line = run_bad(argv, tmp_path, capsys)
    assert needle in line, line


# ------------------------------------------- B: TuneRequest fields are checked when it is made
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"meta": None}, "--meta must be a path"),  # was: the checkpoint path "None"
        ({"meta": 3}, "--meta must be a path"),
        ({"meta": ""}, "--meta must be a non-empty path"),
        ({"out": None}, "--out must be a path"),  # was: TypeError inside raymeta.tune
        ({"out": 3}, "--out must be a path"),
        ({"label": "a/b"}, "label 'a/b' must be 1-128 characters"),  # was: after the plan
        ({"label": ""}, "label '' must be 1-128 characters"),
        # was: refused by ray_context once the checkpoint was read and the task built
        ({"address": "nope"}, "cannot parse Ray address 'nope'"),
        ({"address": "ray://10.0.0.1:10001"}, "ray:// (Ray Client) addresses are not supported"),
        ({"address": "head:99999"}, "the port must be a number in 1..65535"),
    ],
)
def test_tune_request_refuses_bad_paths_labels_and_addresses(
    change: dict[str, Any], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raymeta
    import raymeta.orchestration.tune.run

    monkeypatch.setattr(raymeta.orchestration.tune.run, "plan_tune", _no_work)
    kw = {"meta": "m", "task": "sinusoid:0", "trials": 1, "out": "o", **change}
    with pytest.raises(raymeta.RaymetaError) as err:
        raymeta.TuneRequest(**kw)
    assert needle in str(err.value), str(err.value)
    with pytest.raises(raymeta.RaymetaError) as err:
        raymeta.tune(**kw)  # the keyword form builds the same request
    assert needle in str(err.value), str(err.value)


def test_tune_request_takes_good_addresses_and_paths(tmp_path: Path) -> None:
    from raymeta import TuneRequest

    for address in ("auto", "local", "10.0.0.1:6379", "head-1.example:6379", "[::1]:6379"):
        assert TuneRequest("m", "t", trials=1, address=address).address == address
    r = TuneRequest(tmp_path / "m", "t", trials=1, out=tmp_path / "o", label="my.sweep-1")
    assert r.to_dict()["meta"] == str(tmp_path / "m") and r.label == "my.sweep-1"


def test_cli_address_ray_client_is_refused_in_ray_contexts_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: accepted where the Ray Client extra is installed (``grpc`` importable), then
    refused by ``ray_context`` after the checkpoint was read; without it, a message
    suggesting the extra would help. Now the same line either way."""
    for argv in (TU, ["meta-train", "--local", "--out", "o"]):
        line = run_bad([*argv, "--address", "ray://10.0.0.1:10001"], tmp_path, capsys)
        assert "ray:// (Ray Client) addresses are not supported" in line, line
        assert "pip install" not in line


# ----------------------------------------- B: broad_space and FinetuneConfig argument types
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # was: the candidates m, l, p (a string read letter by letter)
        (("mlp", 5), "candidates must be a non-empty list of model candidate names"),
        ((["mlp"], float("nan")), "max_batch must be an integer >= 1"),  # was ValueError
        ((["mlp"], 5, "10"), "max_steps must be an integer >= 1"),  # was TypeError
        ((["mlp"], 5.5), "max_batch must be an integer >= 1"),  # was truncated to 5
        ((["mlp"], True), "max_batch must be an integer >= 1"),
        (([1, 2], 5), "a model candidate name must be a string, got 1"),  # was '1', '2'
        (([], 5), "candidates must be a non-empty list"),
    ],
)
def test_broad_space_refuses_bad_arguments(args: tuple[Any, ...], needle: str) -> None:
    from raymeta import ConfigError, broad_space

    with pytest.raises(ConfigError) as err:
        broad_space(*args)
    assert needle in str(err.value), str(err.value)


def test_broad_space_takes_tuples_and_numpy_integers() -> None:
    import numpy as np

    from raymeta import broad_space

    sp = broad_space(("a", "b"), np.int64(7), np.int32(9))
    assert sp["model"].choices == ("a", "b") and sp["batch_size"].high == 7


@pytest.mark.parametrize(
    ("args", "kw", "needle"),
    [
        (("lr",), {}, "give a mapping of hyperparameter: value"),  # was TypeError
        (([("lr", 0.1)],), {}, "give a mapping of hyperparameter: value"),
        ((), {"steps": 1e300}, "steps=1e+300 must be an integer in 1..2**62"),  # int64 overflow
        ((), {"batch_size": 2**63}, "must be an integer in 1..2**62"),
    ],
)
def test_finetune_config_refuses_non_mappings_and_ints_past_int64(
    args: tuple[Any, ...], kw: dict[str, Any], needle: str
) -> None:
    from raymeta import ConfigError, FinetuneConfig

    with pytest.raises(ConfigError) as err:
        FinetuneConfig(*args, **kw)
    assert needle in str(err.value), str(err.value)
    with pytest.raises(ConfigError):
        FinetuneConfig.from_dict("lr")  # type: ignore[arg-type]
    assert FinetuneConfig(steps=2**62)["steps"] == 2**62


# ------------------------- B: priors show reads a priors file's free-form diagnostics safely
@pytest.mark.parametrize(
    ("part", "change"),
    [
        ("info", {"family": "sinusoid"}),  # was AttributeError: 'str' has no attribute 'get'
        ("info", {"fit_seconds": "x"}),  # was ValueError: Unknown format code 'f'
        ("info", {"portfolio_regret": None}),  # was TypeError: NoneType has no len()
        ("selection", {"table": "abc"}),  # was AttributeError
        ("selection", {"table": [1, 2]}),
        ("selection", {"table": None}),  # was TypeError: not iterable
        ("selection", {"table": [{"label": "x", "win_rate_vs_chosen": "y"}]}),  # ValueError
    ],
)
def test_priors_show_survives_odd_diagnostics(
    part: str,
    change: dict[str, Any],
    fitted: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A priors.json written by an older raymeta, by hand through the storage step, or by
    ``raymeta.write_priors`` (which checks what a tune reads, not the diagnostics) printed
    "internal error" instead of its tables."""
    import shutil

    import raymeta
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.core.checkpoint import write_priors as store

    d = tmp_path / "ckpt"
    shutil.copytree(fitted, d)
    good = raymeta.load_priors(load_meta_checkpoint(d)).to_dict()
    store(d, good | {part: {**good[part], **change}})
    rc, err = run_cli(["priors", "show", "--meta", str(d)], capsys)
    assert (rc, err) == (0, []), err


# ------------------------------------- B: RAYMETA_KEY_FILE that cannot sign, before Ray starts
@pytest.mark.parametrize("kind", ["binary", "directory", "fifo"])
def test_a_key_file_that_cannot_sign_is_one_line_before_ray(
    kind: str,
    fitted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Was: read first once Ray had started and Tune had written its state (a binary key an
    internal UnicodeDecodeError, a directory an IsADirectoryError, a FIFO a hang)."""
    import os

    import raymeta.orchestration.ray_runtime

    key = tmp_path / "keys" / "run-key"
    key.parent.mkdir(mode=0o700)
    if kind == "binary":
        key.write_bytes(b"\xff\xfe\x00" * 20)
        key.chmod(0o600)
    elif kind == "directory":
        key.mkdir(mode=0o700)
    else:
        os.mkfifo(key, 0o600)
    monkeypatch.setenv("RAYMETA_KEY_FILE", str(key))
    monkeypatch.setattr(raymeta.orchestration.ray_runtime, "ray_context", _no_work)
    work = tmp_path / "work"
    work.mkdir()
    argv = ["tune", "--meta", str(fitted), "--task", "sinusoid:0", "--trials", "1"]
    argv += ["--budget", "4", "--out", "out", "--quiet", "--strategy", "meta+broad+random"]
    line = run_bad(argv, work, capsys)
    want = "is damaged" if kind == "binary" else "is not a regular file"
    assert f"raymeta key file {key} {want}" in line, line


# --------------------------------------------- B: a reader that leaves early is not an error
def test_a_closed_stdout_pipe_ends_quietly(results: Path) -> None:
    """``raymeta report ... | head -0``: was "raymeta: error: Broken pipe" and exit 2, as for
    bad input. Now exit 141 (128 + SIGPIPE, what shells report for a killed writer) and
    nothing on stderr; a full disk (/dev/full) is still one error line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "raymeta", "report", str(results), "--format", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first byte is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == "", err
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "raymeta: error: No space left on device"
    ], done.stderr


# ------------------ Hypothesis: good values are taken, flag and --config alike (report, predict)
# The fuzz tests (test_fuzz_cli.py) check that bad input is one line; these check the other
# half, that good input is not refused, and that a config file means what the flags mean.
# ``report --target -1e-3`` (refused until this round) is what such a property finds.

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
spellings = st.sampled_from(["{!r}", "{:e}", "{:.3E}", "{:g}", "{:.17g}"])


def _quiet(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: exit code, stdout, stderr (no pytest capture: Hypothesis
    runs many examples in one test)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(rc: int, err: str) -> str:
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("raymeta: error:"), (rc, err)
    return lines[0]


@PROPERTY
@given(x=finite, spelling=spellings)
def test_report_takes_every_finite_target(
    results: Path, tmp_path: Path, x: float, spelling: str
) -> None:
    import json

    import yaml

    text = spelling.format(x)
    rc, out, err = _quiet(["report", str(results), "--target", text, "--format", "json"])
    assert rc == 0, (text, err)
    assert json.loads(out)["target"] == float(text)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({"target": x, "format": "json"}))
    rc2, out2, err2 = _quiet(["report", str(results), "--config", str(cfg)])
    assert rc2 == 0 and json.loads(out2)["target"] == x, err2


@PROPERTY
@given(
    text=st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "-1e999", "NaN", "-Infinity"])
    | st.text(st.characters(blacklist_characters="\x00"), min_size=1).filter(
        lambda t: not _is_float(t)
    )
)
def test_report_refuses_every_target_that_is_not_a_finite_number(results: Path, text: str) -> None:
    rc, out, err = _quiet(["report", str(results), "--target", text])
    line = _one_error_line(rc, err)
    assert "--target" in line or "argument" in line, line


def _is_float(text: str) -> bool:
    import math

    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tune run directory as ``raymeta tune`` writes it (an MLP on 3 inputs) and a plain
    table with columns a, b, c to predict on."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymeta.core.models import ModelSpec

    root = write_tune_run(
        tmp_path_factory.mktemp("s29run"), ModelSpec("mlp", (3,), 1, {"widths": [8]})
    )
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    table = root.parent / "plain.parquet"
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), table)
    return root, table


@PROPERTY
@given(
    rows=st.integers(1, 1 << 24),
    how=st.sampled_from(["flag", "config"]),
    columns=st.sampled_from(["a,b,c", " a , b , c ", "a,b,c", "[a, b, c]"]),
)
def test_predict_takes_every_batch_size_in_range_the_same_way(
    tuned_run: tuple[Path, Path], tmp_path: Path, rows: int, how: str, columns: str
) -> None:
    """Any --batch-rows in 1..2**24, given as a flag or as a config key, predicts exactly what
    the default does; ``feature_columns`` as text or a YAML list (README, Command line)."""
    import numpy as np
    import pyarrow.parquet as pq

    run, table = tuned_run
    ref = tmp_path / "ref.parquet"
    base = ["predict", "--run", str(run), "--input", str(table), "--overwrite"]
    if not ref.exists():
        rc, _, err = _quiet([*base, "--out", str(ref), "--feature-columns", "a,b,c"])
        assert rc == 0, err
    out = tmp_path / "p.parquet"
    if how == "flag":
        if columns.startswith("["):
            columns = "a,b,c"  # a YAML list is a config form
        argv = [*base, "--out", str(out), "--batch-rows", str(rows), "--feature-columns", columns]
    else:
        cfg = tmp_path / "p.yaml"
        cols = columns if columns.startswith("[") else repr(columns)
        cfg.write_text(f"batch_rows: {rows}\nfeature-columns: {cols}\nout: {out}\n")
        argv = [*base, "--config", str(cfg)]
    rc, _, err = _quiet(argv)
    assert rc == 0, (argv, err)
    got, want = (pq.read_table(p).column("prediction").to_numpy() for p in (out, ref))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # batch shapes change BLAS paths


option_names = st.sampled_from(
    ["batch_rows", "batch-rows", "device", "overwrite", "feature_columns", "out", "input", "run"]
    + ["sweep", "pool", "format", "plots", "metric", "target"]
)
odd_keys = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=16
)
yaml_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | finite | odd_keys


@PROPERTY
@given(
    command=st.sampled_from(["report", "predict"]),
    pairs=st.dictionaries(option_names | odd_keys, yaml_scalars, min_size=1, max_size=4),
)
def test_config_keys_are_taken_or_named_in_one_line(
    tuned_run: tuple[Path, Path],
    results: Path,
    tmp_path: Path,
    command: str,
    pairs: dict[str, Any],
) -> None:
    """Whatever keys and scalar values a config file holds: exit 0, or one error line; only a
    key that is no option of the command is called unknown, and a file of nothing but such
    keys is refused so; nothing is written on exit 2."""
    import yaml

    from raymeta.cli.main import build_parser

    run, table = tuned_run
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(pairs, allow_unicode=True))
    if command == "report":
        argv = ["report", str(results), "--config", str(cfg)]
    else:
        out = str(work / "p.parquet")
        argv = ["predict", "--run", str(run), "--input", str(table), "--out", out]
        argv += ["--feature-columns", "a,b,c", "--overwrite", "--config", str(cfg)]
    sub = next(
        a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    ).choices[command]  # type: ignore[attr-defined]
    dests = {a.dest for a in sub._actions if a.option_strings} - {"help", "config"}
    before = sorted(p.name for p in work.iterdir())
    rc, _, err = _quiet(argv)
    if rc != 0:
        line = _one_error_line(rc, err)
        assert sorted(p.name for p in work.iterdir()) == before
        unknown = [k for k in pairs if k.replace("-", "_") not in dests or k.startswith("_")]
        if len(unknown) == len(pairs):
            assert "unknown option" in line, (pairs, line)
        if "unknown option" in line:
            assert any(f"unknown option {k!r}" in line for k in unknown), (pairs, line)
    else:
        assert all(k.replace("-", "_") in dests for k in pairs), (pairs, err)


# ----------------------- B: a weights file torch refuses is named without torch's unsafe advice
def test_a_file_that_is_not_plain_tensors_gets_no_advice_to_unpickle_it(
    tuned_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: torch's message, whose first line says rerunning torch.load with
    weights_only=False "will likely succeed" (arbitrary code execution; and no raymeta command
    can do it). Now the refusal and its detail only, for a candidate's weights and a run's
    best_model.pt alike."""
    import argparse
    import hashlib
    import json
    import shutil

    import torch

    bad = tmp_path / "w.pt"
    torch.save({"w": argparse.Namespace(a=1)}, bad)  # a pickled object, not a tensor
    argv = [
        "meta-train",
        "--local",
        "--steps",
        "1",
        "--out",
        "o",
        "--candidate",
        f"a weights={bad}",
    ]
    line = run_bad(argv, tmp_path, capsys)
    assert f"{bad} is not a weights-only tensor file: torch.load(weights_only=True) refused" in line
    assert "GLOBAL argparse.Namespace was not an allowed global by default" in line, line
    assert "likely succeed" not in line and "add_safe_globals" not in line, line
    run, table = tuned_run
    other = tmp_path / "run"
    shutil.copytree(run, other)
    (other / "best_model.pt").write_bytes(bad.read_bytes())
    rep = json.loads((other / "report.json").read_text())
    rep["model_sha256"] = hashlib.sha256(bad.read_bytes()).hexdigest()
    (other / "report.json").write_text(json.dumps(rep))
    argv = ["predict", "--run", str(other), "--input", str(table), "--out", "p.parquet"]
    line = run_bad([*argv, "--feature-columns", "a,b,c"], tmp_path, capsys)
    assert "best_model.pt is not a weights-only tensor file: torch.load(weights_only" in line
    assert "likely succeed" not in line, line


# ------------------------------- B: run_population's steps and interval are checked integers
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"steps": 2.5}, "steps must be an integer in 1..2**62, got 2.5"),  # was TypeError
        ({"steps": float("nan")}, "steps must be an integer in 1..2**62"),  # was TypeError
        ({"steps": "2"}, "steps must be an integer in 1..2**62, got '2'"),  # was TypeError
        ({"steps": 10**30}, "steps must be an integer in 1..2**62"),  # was OverflowError
        ({"steps": True}, "steps must be an integer in 1..2**62"),
        ({"interval": float("inf")}, "interval must be an integer in 1..2**62"),
        ({"interval": 0}, "interval must be an integer in 1..2**62, got 0"),
    ],
)
def test_run_population_refuses_steps_and_intervals_that_are_not_counts(
    change: dict[str, Any], needle: str, ckpt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raymeta.finetune.run
    from raymeta import ConfigError, make_family, run_population

    monkeypatch.setattr(raymeta.finetune.run, "initial_state", _no_work)
    kw: dict[str, Any] = {"init": "meta", "steps": 2, "interval": 1, "seed": 0, **change}
    task = make_family("sinusoid").task("test", 0)
    with pytest.raises(ConfigError) as err:
        run_population(task, ckpt.candidates, [{"lr": 0.01}], **kw)
    assert needle in str(err.value), str(err.value)


def test_run_population_takes_numpy_integer_steps(ckpt: Any) -> None:
    import numpy as np

    from raymeta import make_family, run_population

    task = make_family("sinusoid").task("test", 0)
    res = run_population(
        task, ckpt.candidates, [{}], init="meta", steps=np.int64(2), interval=np.int32(1), seed=0
    )
    assert res.curves.step == [1, 2]


# ------------------------------------- B: --overwrite replaces a checkpoint, never other files
@pytest.mark.parametrize("local", [True, False])
def test_meta_train_overwrite_never_replaces_a_directory_of_other_files(
    local: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: ``raymeta meta-train --out . --overwrite`` in a project swapped the project
    directory (its sources included) for a meta-checkpoint, and the refusal without
    --overwrite said "pass --overwrite to replace it"."""
    import raymeta.orchestration.ray_runtime

    monkeypatch.setattr(raymeta.orchestration.ray_runtime, "ray_context", _no_work)
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "code.py").write_text("precious")
    (proj / "README").write_text("x")
    argv = ["meta-train", "--steps", "1", "--meta-batch", "2", "--val-tasks", "1", "--quiet"]
    argv += ["--local"] if local else []
    for extra in ([], ["--overwrite"]):
        line = run_bad([*argv, "--out", ".", *extra], proj, capsys)
        assert "holds files that are not a meta-checkpoint (README, src)" in line, line
        assert "pass --overwrite" not in line
    assert (proj / "src" / "code.py").read_text() == "precious"


def test_save_meta_checkpoint_overwrite_keeps_other_files(ckpt: Any, tmp_path: Path) -> None:
    import raymeta

    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("keep")
    with pytest.raises(raymeta.ConfigError, match=r"holds files that are not a meta-checkpoint"):
        raymeta.save_meta_checkpoint(d, ckpt, overwrite=True)
    assert (d / "notes.txt").read_text() == "keep"
    # a checkpoint, a damaged one (its meta.json unreadable) and an empty directory: replaced
    raymeta.save_meta_checkpoint(tmp_path / "c", ckpt)
    raymeta.save_meta_checkpoint(tmp_path / "c", ckpt, overwrite=True)
    (tmp_path / "c" / "meta.json").write_text("{")
    raymeta.save_meta_checkpoint(tmp_path / "c", ckpt, overwrite=True)
    (tmp_path / "e").mkdir()
    raymeta.save_meta_checkpoint(tmp_path / "e", ckpt, overwrite=True)
    assert raymeta.load_meta_checkpoint(tmp_path / "c").candidates.keys() == ckpt.candidates.keys()


def test_meta_train_overwrite_still_replaces_a_damaged_checkpoint(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(ckpt_dir, d)
    (d / "meta.json").write_text("{")
    argv = ["meta-train", "--local", "--steps", "1", "--meta-batch", "2", "--val-tasks", "1"]
    line = run_bad([*argv, "--quiet", "--out", str(d)], tmp_path, capsys)
    assert "a damaged meta-checkpoint (its meta.json cannot be read)" in line, line
    assert run_cli([*argv, "--quiet", "--out", str(d), "--overwrite"], capsys)[0] == 0
    from raymeta import load_meta_checkpoint

    assert load_meta_checkpoint(d).config["steps"] == 1


# ------------------------------------------ B: a tune run never writes into its checkpoint
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--out", "CK"], "--out {ck} lies inside the meta-checkpoint"),
        (["--out", "CK/tune"], "--out {ck}/tune lies inside the meta-checkpoint"),
        (["--out", "o", "--storage", "CK/ray"], "--storage {ck}/ray lies inside"),
    ],
)
def test_tune_out_or_storage_inside_the_checkpoint_is_refused(
    flags: list[str],
    needle: str,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was: ``--out META/tune`` (and a --storage there) reached Ray; the run's reports, Ray
    Tune state and result parts went into the checkpoint directory."""
    import shutil

    import raymeta.orchestration.ray_runtime

    monkeypatch.setattr(raymeta.orchestration.ray_runtime, "ray_context", _no_work)
    ck = tmp_path / "ck"
    shutil.copytree(ckpt_dir, ck)
    argv = ["tune", "--meta", str(ck), "--task", "sinusoid:0", "--trials", "1", "--budget", "4"]
    argv += ["--strategy", "meta+broad+random", "--quiet"]
    argv += [f.replace("CK", str(ck)) for f in flags]
    line = run_bad(argv, tmp_path, capsys)
    assert needle.format(ck=ck) in line, line


# ---------------------------------------- B: a FIFO where a Parquet file is read never hangs
def test_a_fifo_named_like_parquet_is_refused_not_waited_on(results: Path, tmp_path: Path) -> None:
    """Was: ``data validate FIFO.parquet`` and ``report`` of a dataset holding a FIFO named
    ``part-*.parquet`` waited forever (reading a footer from a pipe nobody writes). Run in a
    subprocess with a timeout, so a regression fails instead of hanging the suite."""
    import os
    import shutil
    import subprocess
    import sys

    fifo = tmp_path / "t.parquet"
    os.mkfifo(fifo)
    res = tmp_path / "res"
    shutil.copytree(results, res)
    os.mkfifo(res / "sweep=demo" / "part-zz.parquet")
    for argv, needle in (
        (["data", "validate", str(fifo)], "not a regular file or directory"),
        (["report", str(res)], "result part"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "raymeta", *argv], capture_output=True, text=True, timeout=60
        )
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("raymeta: error:") and needle in lines[0], lines
        assert "not a regular file" in lines[0]


# ------------------------------------ B: a table with two columns of one name, named as such
def _dup_table(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [pa.array([0.5, 1.0, 2.0, 3.0, 4.0] * 4) for _ in range(4)]
    pq.write_table(pa.Table.from_arrays(cols, names=["a", "b", "a", "y"]), path)


def _plain_table(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = [0.5, 1.0, 2.0, 3.0, 4.0] * 4
    pq.write_table(pa.table({"a": x, "b": x, "y": x}), path)


@pytest.mark.parametrize("layout", ["file", "dir, first file", "dir, second file"])
def test_a_column_name_held_twice_is_named(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "not a readable Parquet file (Can't unify schema with duplicate field names.)"
    for a file or a directory whose first file repeats a name; and for a later file of a
    directory, the conversion went through, reading whichever 'a' pyarrow picked."""
    src = tmp_path / "in"
    if layout == "file":
        src = tmp_path / "in.parquet"
        _dup_table(src)
        dup = src
    else:
        src.mkdir()
        first, second = src / "a.parquet", src / "b.parquet"
        dup = first if layout == "dir, first file" else second
        _dup_table(dup)
        _plain_table(second if dup == first else first)
    argv = ["data", "convert", "--input", str(src), "--out", "o.parquet"]
    line = run_bad([*argv, "--feature-columns", "a,b", "--target-column", "y"], tmp_path, capsys)
    where = f"{src}: has" if layout == "file" else f"{src}: file {dup} has"
    assert f"{where} two columns named 'a'" in line, line


# ---------------------------------------------------- B: RAYMETA_DEBUG=0 means off
@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("yes", True), ("0", False), ("false", False), (" OFF ", False), ("", False)],
)
def test_raymeta_debug_zero_keeps_tracebacks_off(
    value: str, on: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: any non-empty value, RAYMETA_DEBUG=0 included, turned an internal error into a
    traceback (and an OSError into one too)."""
    import raymeta.cli.report

    def boom(args: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setenv("RAYMETA_DEBUG", value)
    monkeypatch.setattr(raymeta.cli.report, "run", boom)
    argv = ["report", "x"]
    if on:
        with pytest.raises(RuntimeError, match="a bug"):
            main(argv)
    else:
        assert main(argv) == 1
        assert capsys.readouterr().err.startswith("raymeta: internal error: RuntimeError: a bug")
