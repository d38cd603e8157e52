"""Bad inputs of round 29 (second batch): one ``raymeta: error:`` line and exit 2 before any
work, raymeta's own errors from the Python API, and good inputs not refused.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). No
case starts Ray: each is refused before any work, and the work a command would start is
replaced, where a regression could reach it, by a function that fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

import raymeta
from raymeta.errors import ConfigError


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the bad input was not refused before the work started")


# ------------------------------------------- 1: load_sweep / sweep check their argument types
@pytest.mark.parametrize("path", [3, None, b"s.yaml", ""])
def test_load_sweep_refuses_a_non_path(path: Any) -> None:
    """Was: ``load_sweep(3)`` a bare TypeError from ``pathlib`` (expected str, bytes or
    os.PathLike object)."""
    with pytest.raises(ConfigError, match="^sweep file must be a"):
        raymeta.load_sweep(path)


def test_parse_sweep_refuses_a_non_path_base(ckpt_dir: Path) -> None:
    with pytest.raises(ConfigError, match="^sweep: base must be a path"):
        raymeta.parse_sweep({"meta": [ckpt_dir.name], "strategies": ["auto"]}, base=3)


def test_load_sweep_takes_str_and_path(ckpt_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(f"meta: [{ckpt_dir}]\nstrategies: [auto]\ntasks: 2\n")
    assert raymeta.load_sweep(f) == raymeta.load_sweep(str(f))
    assert raymeta.load_sweep(f).tasks == (0, 1)


def _sweep_cfg(ckpt_dir: Path) -> Any:
    return raymeta.parse_sweep({"meta": [str(ckpt_dir)], "strategies": ["auto"], "tasks": 1})


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        # was: AttributeError: 'int' object has no attribute 'meta' (after the output lock)
        ({"cfg": 3}, "cfg must be a SweepConfig (from raymeta.load_sweep"),
        ({"cfg": {"name": "x"}}, "cfg must be a SweepConfig"),
        # was: TypeError: expected str, bytes or os.PathLike object, not int
        ({"out": 3}, "out must be a path"),
        ({"out": None}, "out must be a path"),
        ({"out": ""}, "out must be a non-empty path"),
        ({"progress": "no"}, "progress must be true or false"),
        ({"progress": 0}, "progress must be true or false"),
        ({"address": 6379}, "address must be HOST:PORT, auto or None"),
        ({"address": " "}, "address must be HOST:PORT, auto or None"),
        # was: TypeError: '>=' not supported between instances of 'str' and 'int'
        ({"flush_s": "1"}, "flush_s must be seconds >= 0"),
        ({"local": "yes"}, "local must be true or false"),
    ],
)
def test_sweep_api_refuses_wrong_types(
    kwargs: dict[str, Any],
    needle: str,
    ckpt_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import raymeta.orchestration.sweep.run as sweep_run

    monkeypatch.setattr(sweep_run, "check_sweep", _no_work)
    args: dict[str, Any] = {"cfg": _sweep_cfg(ckpt_dir), "out": tmp_path / "results"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        raymeta.sweep(**args)
    assert not (tmp_path / "results").exists()


# ------------------------------------------- 2: sweep --address checked as every command's is
@pytest.mark.parametrize(
    ("address", "needle"),
    [
        # was: accepted, then 'cannot parse Ray address' once the sweep file and every
        # meta-checkpoint had been read and checked
        ("no-port", "expected HOST:PORT or auto, got 'no-port'"),
        ("head:99999", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("ray://10.0.0.1:10001", "ray:// (Ray Client) addresses are not supported"),
    ],
)
def test_sweep_address_is_checked_at_parse_time(
    address: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import raymeta.orchestration.sweep.config as sweep_config

    mp = pytest.MonkeyPatch()
    mp.setattr(sweep_config, "load_sweep", _no_work)
    try:
        argv = ["sweep", "s.yaml", "--out", "o", "--address", address]
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line.startswith("raymeta: error: sweep: argument --address: "), line
    assert needle in line, line


def test_sweep_address_from_config_is_checked_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("address: nope\n")
    line = run_bad(["sweep", "s.yaml", "--out", "o", "--config", "c.yaml"], tmp_path, capsys)
    assert "nope" in line and "HOST:PORT" in line, line


def test_sweep_good_addresses_still_parse() -> None:
    from raymeta.cli.main import build_parser

    parser = build_parser()
    for address in ("auto", "10.0.0.1:6379", " head-1.example:6379", "[::1]:6379"):
        args = parser.parse_args(["sweep", "s.yaml", "--out", "o", "--address", address])
        assert args.address == address.strip()


def test_sweep_local_with_a_good_address_keeps_its_wording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "s.yaml", "--out", "o", "--local", "--address", "10.0.0.1:6379"]
    line = run_bad(argv, tmp_path, capsys)
    assert "--local runs the sweep on this machine without Ray and cannot join --address" in line


# ---------------------------------- 3: meta-train --local --address (the address was ignored)
@pytest.mark.parametrize("address", ["10.0.0.1:6379", "auto"])
def test_meta_train_local_with_address_is_refused(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: the run meta-trained in this process and never joined the cluster, without a
    word. Refused like ``sweep --local --address``, before the config is built."""
    import raymeta.cli.meta_train
    import raymeta.orchestration.meta_train.local

    mp = pytest.MonkeyPatch()
    mp.setattr(raymeta.cli.meta_train, "build_config", _no_work)
    mp.setattr(raymeta.orchestration.meta_train.local, "run_local_meta_train", _no_work)
    try:
        argv = ["meta-train", "--local", "--address", address, "--out", "ck", "--steps", "1"]
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line == (
        f"raymeta: error: --local meta-trains in this process without Ray and cannot join "
        f"--address {address}: give one of them"
    )


def test_meta_train_local_address_from_config_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("local: true\naddress: 10.0.0.1:6379\n")
    argv = ["meta-train", "--config", "c.yaml", "--out", "ck", "--steps", "1"]
    assert "cannot join --address 10.0.0.1:6379" in run_bad(argv, tmp_path, capsys)


def test_local_meta_training_api_takes_no_address() -> None:
    """The Python API's in-process meta-training (``raymeta.meta_train``, and the CLI's
    ``run_local_meta_train``) has no address to ignore: only ``run_meta_train`` joins a
    cluster, and it always runs on Ray."""
    import inspect

    from raymeta.orchestration.meta_train.local import run_local_meta_train

    for fn in (raymeta.meta_train, run_local_meta_train):
        assert "address" not in inspect.signature(fn).parameters
    assert "local" not in inspect.signature(raymeta.run_meta_train).parameters


# ------------------- 4: --workers against the embedded Ray's CPUs before it starts (not after)
@pytest.fixture
def no_ray_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray running or reachable: no RAY_ADDRESS, and a Ray another test left initialised
    in this process is not seen. Starting one fails the test."""
    import sys

    import raymeta.orchestration.meta_train.ray_train as ray_train
    import raymeta.orchestration.ray_runtime as ray_runtime

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_OVERRIDE_RESOURCES", raising=False)
    monkeypatch.setattr(ray_runtime, "ray_context", _no_work)
    monkeypatch.setattr(ray_train, "ray_context", _no_work)
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)


@pytest.fixture
def two_cpu_embedded_ray(no_ray_running: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``no_ray_running``, and an embedded Ray would get 2 CPUs."""
    import raymeta.orchestration.ray_runtime as ray_runtime

    monkeypatch.setattr(ray_runtime, "embedded_cpus", lambda: 2.0)


EMBEDDED = "needs {} CPUs but the embedded local Ray has 2 (the CPUs Ray finds on this machine"


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        # was: refused by check_resources once the embedded Ray had started (seconds)
        (["quickstart", "--workers", "3", "--smoke-test"], "meta-train with 3 worker(s)"),
        (["meta-train", "--workers", "3", "--out", "ck", "--steps", "1"], "meta-train with 3"),
        (
            ["meta-train", "--workers", "2", "--cpus-per-worker", "1.5", "--out", "ck"],
            "meta-train with 2 worker(s)",
        ),
        (
            ["bench", "meta-train", "--workers", "1", "3", "--threads", "1"],
            "--workers 3 with --threads 1 CPUs each",
        ),
    ],
)
def test_workers_beyond_the_embedded_ray_refused_before_it_starts(
    argv: list[str],
    what: str,
    two_cpu_embedded_ray: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import raymeta.bench.meta_train

    mp = pytest.MonkeyPatch()
    mp.setattr(raymeta.bench.meta_train, "in_process_rate", _no_work)
    try:
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line.startswith(f"raymeta: error: {what}"), line
    assert EMBEDDED.format(3) in line, line  # 3 workers, 2 x 1.5 CPUs, 3 x 1 thread


def test_tune_cpus_per_trial_beyond_the_embedded_ray(
    two_cpu_embedded_ray: None, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--meta", str(ckpt_dir), "--task", "sinusoid:0", "--trials", "2"]
    line = run_bad([*argv, "--out", "o", "--cpus-per-trial", "3"], tmp_path, capsys)
    assert "a tune trial " + EMBEDDED.format(3) in line, line


def test_run_meta_train_api_refuses_before_ray(two_cpu_embedded_ray: None, tmp_path: Path) -> None:
    from raymeta.errors import ClusterError

    cfg = raymeta.MetaTrainConfig(steps=1)
    with pytest.raises(ClusterError, match=r"meta-train with 3 worker\(s\) needs 3 CPUs"):
        raymeta.run_meta_train(cfg, tmp_path / "ck", workers=3)
    # candidates: checked where Ray would start, once, before the first trained candidate
    cfg = raymeta.MetaTrainConfig(steps=1, candidates=["a model=mlp", "b model=mlp widths=[8]"])
    with pytest.raises(ClusterError, match=r"meta-train with 2 worker\(s\) needs 4 CPUs"):
        raymeta.run_meta_train(cfg, tmp_path / "ck", workers=2, cpus_per_worker=2)
    assert not (tmp_path / "ck").exists()


def test_workers_within_the_embedded_ray_are_not_refused(
    two_cpu_embedded_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 workers on 2 CPUs get to the Ray start (here: the function that fails the test)."""
    with pytest.raises(AssertionError, match="not refused before the work started"):
        raymeta.run_meta_train(raymeta.MetaTrainConfig(steps=1), tmp_path / "ck", workers=2)


@pytest.mark.parametrize("address", ["10.0.0.1:6379", "auto", "nope"])
def test_with_an_address_the_cluster_decides(
    address: str, two_cpu_embedded_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joining a cluster (also through RAY_ADDRESS) nothing is checked before the join; a bad
    address is left to ``ray_context``'s own words."""
    from raymeta.orchestration.ray_runtime import check_resources_before_start

    check_resources_before_start(address, 1000, "x")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    check_resources_before_start(None, 1000, "x")


def test_embedded_cpus_is_what_ray_would_get(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from raymeta.orchestration.ray_runtime import embedded_cpus

    monkeypatch.delenv("RAY_OVERRIDE_RESOURCES", raising=False)
    got = embedded_cpus()
    assert got is not None and 1 <= got <= (os.cpu_count() or 1)
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 64}')
    assert embedded_cpus() == 64.0
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", "not json")
    assert embedded_cpus() is None


def test_quickstart_1024_workers_refused_on_this_machine(
    no_ray_running: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real count (no stand-in): no test machine has 1,024 CPUs."""
    line = run_bad(["quickstart", "--workers", "1024"], tmp_path, capsys)
    assert "meta-train with 1024 worker(s) needs 1024 CPUs but the embedded local Ray" in line


# --------------------------- 5: bench fewshot --data-path only where a suite reads data files
@pytest.mark.parametrize("suite", ["sinusoid", "digits"])
@pytest.mark.parametrize("path", ["/data/omniglot", "."])
def test_bench_fewshot_data_path_refused_for_suites_without_data(
    suite: str, path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: ignored without a word (the sinusoid tasks are generated, the digits ship in the
    package), so a typo'd ``--suite`` ran minutes of the wrong benchmark."""
    import raymeta.bench.fewshot

    mp = pytest.MonkeyPatch()
    mp.setattr(raymeta.bench.fewshot, "run_setting", _no_work)
    try:
        argv = ["bench", "fewshot", "--suite", suite, "--budget", "smoke", "--data-path", path]
        line = run_bad(argv, tmp_path, capsys)
    finally:
        mp.undo()
    assert line == (
        f"raymeta: error: --data-path is the Omniglot directory; the {suite} suite reads no "
        "data files (drop --data-path)"
    )


def test_bench_fewshot_settings_api_refuses_the_same() -> None:
    from raymeta.bench.fewshot import settings

    with pytest.raises(ConfigError, match="the sinusoid suite reads no data files"):
        settings("sinusoid", "smoke", "/data/omniglot")
    assert settings("sinusoid", "smoke") and settings("digits", "smoke", None)


def test_bench_fewshot_data_path_help_says_omniglot_only() -> None:
    from raymeta.cli.bench import bench_parser

    text = " ".join(bench_parser("fewshot").format_help().split())
    assert "Omniglot directory, omniglot suite only" in text


# ------------------ 6: predict / data outputs never inside a checkpoint, tune run or dataset
def _artifacts(root: Path, ckpt_dir: Path) -> dict[str, Path]:
    """A meta-checkpoint, a finished tune run and a results dataset under ``root``."""
    import json
    import shutil

    ck = Path(shutil.copytree(ckpt_dir, root / "ck"))
    run = root / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "report.json").write_text("{}")
    data = root / "data"
    (data / "sweep=s").mkdir(parents=True)
    (data / "_schema.json").write_text(json.dumps({"schema_version": 1}))
    return {"meta-checkpoint": ck, "tune run": run, "results dataset": data}


@pytest.mark.parametrize(
    ("kind", "rel"),
    [
        # was: exit 0, the checkpoint's meta.json replaced by a Parquet file (checkpoint lost)
        ("meta-checkpoint", "meta.json"),
        ("meta-checkpoint", "preds.parquet"),
        ("meta-checkpoint", "sub/preds.parquet"),
        ("tune run", "report.json"),  # another run than --run's
        ("tune run", "preds.parquet"),
        # was: a part of the dataset that 'raymeta report' then failed to read
        ("results dataset", "sweep=s/p.parquet"),
        ("results dataset", "_schema.json"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "data convert", "data make-sinusoid"])
def test_outputs_inside_artifacts_are_refused(
    command: str,
    kind: str,
    rel: str,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = _artifacts(tmp_path, ckpt_dir)
    out = where[kind] / rel
    argv = {
        "predict": ["predict", "--run", "other-run", "--input", "x.parquet"],
        "data convert": ["data", "convert", "--input", "x.parquet", "--target-column", "y"],
        "data make-sinusoid": ["data", "make-sinusoid", "--tasks", "3"],
    }[command]
    argv += ["--feature-columns", "a"] if command == "data convert" else []
    line = run_bad([*argv, "--out", str(out), "--overwrite"], tmp_path, capsys)
    assert line.endswith(
        f"--out {out} lies inside the {kind} {where[kind]}; pick a path outside it"
    )


def test_predict_api_refuses_an_out_inside_a_checkpoint(ckpt_dir: Path, tmp_path: Path) -> None:
    ck = _artifacts(tmp_path, ckpt_dir)["meta-checkpoint"]
    before = (ck / "meta.json").read_bytes()
    with pytest.raises(ConfigError, match="lies inside the meta-checkpoint"):
        raymeta.predict("run", tmp_path / "x.parquet", ck / "meta.json", overwrite=True)
    assert (ck / "meta.json").read_bytes() == before


def test_an_out_through_a_symlink_into_a_checkpoint_is_refused(
    ckpt_dir: Path, tmp_path: Path
) -> None:
    from raymeta.paths import check_outside_artifacts

    ck = _artifacts(tmp_path, ckpt_dir)["meta-checkpoint"]
    (tmp_path / "link").symlink_to(ck)
    with pytest.raises(ConfigError, match="lies inside the meta-checkpoint"):
        check_outside_artifacts(tmp_path / "link" / "p.parquet")


def test_look_alikes_and_plain_folders_are_not_artifacts(tmp_path: Path) -> None:
    """Another tool's ``meta.json`` or ``_schema.json``, a ``run.json`` alone: not refused."""
    from raymeta.paths import check_outside_artifacts

    for name, text in (("meta.json", '{"x": 1}'), ("_schema.json", '{"fields": []}')):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / name).write_text(text)
        check_outside_artifacts(d / "p.parquet")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{}")
    check_outside_artifacts(tmp_path / "r" / "p.parquet")
    check_outside_artifacts(tmp_path / "new" / "p.parquet")


def test_sweep_results_check_is_unchanged(ckpt_dir: Path, tmp_path: Path) -> None:
    """``check_results_dir`` (sweep --out) shares the walk: a checkpoint or a tune run is
    refused, an existing results dataset is where a sweep resumes."""
    from raymeta.orchestration.sweep.run import check_results_dir

    where = _artifacts(tmp_path, ckpt_dir)
    check_results_dir(where["results dataset"])
    for kind in ("meta-checkpoint", "tune run"):
        with pytest.raises(ConfigError, match=f"sweep output .* lies inside the {kind}"):
            check_results_dir(where[kind] / "results")


@pytest.fixture
def no_gpu_embedded_ray(two_cpu_embedded_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``two_cpu_embedded_ray``, and an embedded Ray would find no GPU."""
    import raymeta.orchestration.ray_runtime as ray_runtime

    monkeypatch.setattr(ray_runtime, "embedded_gpus", lambda: 0.0)


NO_GPU = "GPUs but the embedded local Ray has 0 (the GPUs Ray finds on this machine"


def test_gpu_requests_beyond_the_embedded_ray_refused_before_it_starts(
    no_gpu_embedded_ray: None, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPUs were only checked once the embedded Ray had started (seconds later); now, as
    CPUs, before it starts: one line, exit 2, nothing written."""
    argv = ["tune", "--meta", str(ckpt_dir), "--task", "sinusoid:0", "--trials", "2"]
    line = run_bad([*argv, "--out", "o", "--gpus-per-trial", "0.5"], tmp_path, capsys)
    assert line.startswith("raymeta: error: a tune trial needs 0.5 " + NO_GPU), line
    argv = ["meta-train", "--workers", "2", "--gpus-per-worker", "1", "--out", "ck"]
    line = run_bad([*argv, "--steps", "1"], tmp_path, capsys)
    assert line.startswith("raymeta: error: meta-train with 2 worker(s) needs 2 " + NO_GPU), line
    assert not (tmp_path / "ck").exists() and not (tmp_path / "o").exists()
    from raymeta.errors import ClusterError

    with pytest.raises(ClusterError, match=r"meta-train with 1 worker\(s\) needs 1 GPUs"):
        raymeta.run_meta_train(
            raymeta.MetaTrainConfig(steps=1), tmp_path / "ck", workers=1, gpus_per_worker=1
        )


def test_embedded_gpus_is_what_ray_would_find(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RAY_OVERRIDE_RESOURCES``'s GPU where it sets one, else the node's GPUs as Ray counts
    them: at most as many as ``CUDA_VISIBLE_DEVICES`` names (a node of 4 here, stubbed)."""
    import os

    import ray._private.accelerators as accelerators

    from raymeta.orchestration.ray_runtime import embedded_gpus

    class FourGPUs:
        @staticmethod
        def get_current_node_num_accelerators() -> int:
            return 4

        @staticmethod
        def get_current_process_visible_accelerator_ids() -> list[str] | None:
            ids = os.environ.get("CUDA_VISIBLE_DEVICES")
            return None if ids is None else [i for i in ids.split(",") if i]

    monkeypatch.setattr(accelerators, "get_accelerator_manager_for_resource", lambda _: FourGPUs)
    monkeypatch.delenv("RAY_OVERRIDE_RESOURCES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert embedded_gpus() == 4.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert embedded_gpus() == 2.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert embedded_gpus() == 0.0
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"GPU": 3}')
    assert embedded_gpus() == 3.0
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 3}')
    assert embedded_gpus() == 0.0
