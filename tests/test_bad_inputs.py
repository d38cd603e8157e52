"""Every bad input to meta-train, priors fit|show, tune and quickstart is one line and exit 2.

One test per defect class of issue 12 (items 6-8 for these commands), parametrized over its
cases. Each case runs ``raymeta.cli.main.main`` in-process in a fresh directory and asserts: exit
status 2, exactly one stderr line starting ``raymeta: error:``, no traceback, and the directory
unchanged (nothing created under ``--out``, no parent directories, no file touched). None of
these cases may start Ray: they are refused before any work. A few run in a subprocess too, to
prove the same for a real process (and bound the time an alias bomb or a deep file can cost).

Read-only targets are paths under ``/sys`` (writes fail there even for root, which ignores
permission bits); a chmod-ed directory is used as well when the tests do not run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
RO = "/sys/raymeta-read-only/out"  # cannot be created, even by root
Setup = Callable[[Path], None]

MT = ["meta-train", "--local", "--steps", "2", "--meta-batch", "2", "--val-tasks", "2"]
MT_RAY = [MT[0], *MT[2:]]  # the Ray Train path (refused before Ray starts)
PF = ["priors", "fit", "--meta", "ckpt", "--tasks", "2", "--configs", "4", "--rounds", "1"]
TU = ["tune", "--meta", "ckpt", "--task", "sinusoid:0", "--trials", "2", "--budget", "8"]
TU_OUT = [*TU, "--out", "out", "--quiet"]


@pytest.fixture(scope="session")
def priors_ckpt(ckpt_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest checkpoint plus a tiny fitted priors.json (what tune needs)."""
    from raymeta.core.checkpoint import write_priors
    from raymeta.finetune import fit_priors

    d = tmp_path_factory.mktemp("priors") / "ckpt"
    shutil.copytree(ckpt_dir, d)
    ck = load_meta_checkpoint(d)
    pr = fit_priors(
        ck, n_tasks=2, n_configs=4, rounds=1, refine_repeats=0, max_steps=4, select_tasks=0
    )
    write_priors(d, pr.to_dict())
    return d


def _snapshot(d: Path) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(d))] = (p.is_dir(), st.st_size, 0 if p.is_dir() else st.st_mtime_ns)
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``raymeta ARGV`` run in-process, with no assertion
    (``run_bad`` asserts the one-line refusal; this also serves good input)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals exit from inside parse_args
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err.splitlines()


def run_bad(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one bad input in ``cwd``; assert the one-line contract; return the error line."""
    before = _snapshot(cwd)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors exit from the parser
            rc = exc.code
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}: {err[-500:]}"
    assert len(lines) == 1, err[-1000:]
    assert lines[0].startswith("raymeta: error:"), lines[0]
    assert "Traceback" not in err
    assert _snapshot(cwd) == before, "a refused run changed its directory"
    return lines[0]


def write(name: str, data: str | bytes) -> Setup:
    def setup(d: Path) -> None:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def both(*fs: Setup) -> Setup:
    def setup(d: Path) -> None:
        for f in fs:
            f(d)

    return setup


# --------------------------------------------------------------------------- meta-train flags
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--outer-lr", "-1"], "--outer-lr: value must be > 0"),
        (["--outer-lr", "0"], "--outer-lr"),
        (["--outer-lr", "inf"], "finite"),
        (["--inner-lr", "nan"], "finite"),
        (["--inner-lr", "-5"], "--inner-lr"),
        (["--steps", "-1"], "--steps"),
        (["--steps", "2.5"], "expected an integer"),
        (["--meta-batch", "0"], "--meta-batch"),
        (["--inner-steps", "-1"], "--inner-steps"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--val-every", "0"], "--val-every"),
        (["--val-tasks", "0"], "--val-tasks"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**70)], "--seed"),
        (["--workers", "0"], "--workers"),
        (["--cpus-per-worker", "nan"], "--cpus-per-worker"),
        (["--cpus-per-worker", "-1"], "--cpus-per-worker"),
        (["--gpus-per-worker", "inf"], "--gpus-per-worker"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--max-failures", "-5"], "--max-failures"),
        (["--log-every", "0"], "--log-every"),
        (["--algo", "bogus"], "invalid choice"),
        (["--address", "ray://127.0.0.1:1"], "--address"),
        (["--address", "no-port"], "--address"),
        (["--address", "host:99999"], "--address"),
        (["--meta-b", "3"], "unrecognized arguments"),  # no abbreviations
        (["--out", ""], "--out"),
    ],
)
def test_meta_train_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*MT, "--out", "out", *extra], tmp_path, capsys)
    assert match in line


# ------------------------------------------------------------ family and model options
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--family-option", "shots=abc"], "shots must be an integer"),
        (["--family-option", "shots=2.5"], "shots must be an integer"),
        (["--family-option", "shots=1e11"], "shots must be an integer"),
        (["--family-option", "shots=true"], "shots must be an integer"),
        (["--family-option", "shots=0"], "shots"),
        (["--family-option", f"shots={10**11}"], "memory"),
        (["--family-option", "queries=[1]"], "queries"),
        (["--family-option", "bogus=1"], "bad options for family"),
        (["--family-option", "shots"], "KEY=VALUE"),
        (["--family", "digits", "--family-option", "ways=1"], "ways"),
        (["--family", "digits", "--family-option", "ways=2.0"], "ways"),
        (["--family", "digits", "--family-option", "rotations=3"], "rotations"),
        (["--family", "digits", "--family-option", "shots=1000"], "exceeds"),
        (["--family", "omniglot", "--family-option", "path=5"], "omniglot"),
        (["--family", "omniglot", "--family-option", "image_size=100000"], "memory"),
        (["--family", "bogus"], "unknown task family"),
        (["--model", "bogus"], "unknown model"),
        (["--model-option", "widths=abc"], "widths"),
        (["--model-option", "widths=[-5]"], "widths"),
        (["--model-option", "widths=[0]"], "widths"),
        (["--model-option", "widths=[2.5]"], "widths"),
        (["--model-option", "widths=[true]"], "widths"),
        (["--model-option", "widths=5"], "widths"),
        (["--model-option", "widths={a: 1}"], "widths"),
        (["--model-option", f"widths=[{10**9}]"], "memory"),
        (["--model-option", "widths=[100000,100000]"], "memory"),
        (["--model-option", "bogus=1"], "bad options for model"),
        (["--model", "conv4"], "conv4"),  # sinusoid inputs are not images
        (["--family", "digits", "--model", "conv4", "--model-option", "hidden=-1"], "hidden"),
        (["--family", "digits", "--model", "conv4", "--model-option", "norm=5"], "norm"),
        (["--meta-batch", "1000000000"], "memory"),
        (["--val-tasks", "1000000000"], "memory"),
    ],
)
def test_family_and_model_options(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*MT, "--out", "out", *extra], tmp_path, capsys)
    assert match in line


# ------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    "text, match",
    [
        ("steps: [1, 2]\n", "'steps' takes one value"),
        ("steps: {a: 1}\n", "'steps' takes one value"),
        ("steps: true\n", "'steps' must be an integer"),
        ("steps: 2.5\n", "'steps' must be an integer"),
        ("steps: '3'\n", "'steps' must be an integer"),
        ("steps: null\n", "'steps' needs a value"),
        ("outer_lr: .nan\n", "finite"),
        ("outer_lr: true\n", "'outer_lr' must be a number"),
        ("inner_lr: -1\n", "inner_lr"),
        ("model: [1]\n", "'model' takes one value"),
        ("model: 5\n", "'model' must be a string"),
        ("algo: bogus\n", "'algo' must be one of"),
        ("first_order: 5\n", "true or false"),
        ("local: 'no'\n", "true or false"),
        ("family_options: 5\n", "'family_options' must be a mapping"),
        ("family_options: [1]\n", "'family_options' must be a mapping"),
        ("family_options: {shots: abc}\n", "shots must be an integer"),
        ("family_options: {1: 2}\n", "option names must be strings"),
        ("model_options: 5\n", "'model_options' must be a mapping"),
        ("out: [1]\n", "'out' takes one value"),
        ("seed: 2001-12-14\n", "'seed' must be an integer"),
        ("bogus: 1\n", "unknown option 'bogus'"),
        ("meta: 2\n", "unknown option 'meta'"),  # no abbreviations in files either
        ("func: 1\n", "unknown option"),
        ("_parser: 1\n", "unknown option"),
        ("config: other.yaml\n", "unknown option"),
        ("[1, 2]\n", "must hold a mapping"),
        ("5: 1\n", "option names must be strings"),
    ],
)
def test_config_values(
    text: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    # --steps/--local are flags here too: a wrong-typed value is refused even where a flag wins
    line = run_bad([*MT, "--out", "out", "--config", "c.yaml"], tmp_path, capsys)
    assert match in line


BOMB = "family_options:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    "data, match",
    [
        (BOMB, "holds more than"),
        (bytes(range(256)) * 4, "not UTF-8"),
        ("steps: 2 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("steps: 2\x00\n", "NUL"),
        ("family_options: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested more than"),
        ("family_options: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested more than"),
        ("family_options: [" + ", ".join(["1"] * 200_000) + "]\n", "holds more than"),
        ("steps: 2\n" + "#" * (2 << 20) + "\n", "larger than"),
        ("family_options: &a {x: *a}\n", "recursive alias"),
        ("steps: 2\nsteps: 3\n", "repeats the key 'steps'"),
        ("steps: 2\n---\nsteps: 3\n", "not valid YAML"),
        ("a: [\n", "not valid YAML"),
        ("steps: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    ],
)
def test_yaml_files(
    data: str | bytes, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write("c.yaml", data)(tmp_path)
    t0 = time.perf_counter()
    line = run_bad([*MT, "--out", "out", "--config", "c.yaml"], tmp_path, capsys)
    assert match in line
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "pwned").exists()


def test_config_file_missing_or_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "does not exist" in run_bad([*MT, "--out", "o", "--config", "no.yaml"], tmp_path, capsys)
    (tmp_path / "d.yaml").mkdir()
    assert "not a file" in run_bad([*MT, "--out", "o", "--config", "d.yaml"], tmp_path, capsys)


def test_abbreviated_flag_does_not_override_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text("tasks: 3\n")
    run_bad([*PF[:-6], "--config", "c.yaml", "--task", "30"], tmp_path, capsys)


# ------------------------------------------------------------- --out and --storage
def _file(name: str) -> Setup:
    return write(name, "x")


def _ro_dir(d: Path) -> None:
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)


OUT_CASES: list[tuple[list[str], Setup | None, str]] = [
    ([*MT, "--out", "out"], _file("out"), "not a directory"),
    ([*MT, "--out", "afile/out"], _file("afile"), "not a directory"),
    ([*MT, "--out", RO], None, "cannot write --out"),
    ([*MT_RAY, "--out", "out", "--storage", "st"], _file("st"), "--storage"),
    ([*MT_RAY, "--out", "out", "--storage", RO], None, "--storage"),
    ([*MT_RAY, "--out", RO], None, "cannot write --out"),
    ([*TU_OUT], _file("out"), "not a directory"),
    ([*TU, "--out", RO], None, "cannot write --out"),
    ([*TU_OUT, "--storage", "st"], _file("st"), "--storage"),
    ([*TU_OUT, "--storage", RO], None, "--storage"),
    (["quickstart", "--out", "out"], _file("out"), "not a directory"),
    (["quickstart", "--out", RO], None, "cannot write --out"),
]
if os.geteuid() != 0:
    OUT_CASES += [
        ([*MT, "--out", "ro/out"], _ro_dir, "cannot write --out"),
        ([*TU, "--out", "ro/out"], _ro_dir, "cannot write --out"),
    ]


@pytest.mark.parametrize("argv, setup, match", OUT_CASES)
def test_out_and_storage(
    argv: list[str],
    setup: Setup | None,
    match: str,
    priors_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    if setup is not None:
        setup(tmp_path)
    assert match in run_bad(argv, tmp_path, capsys)


def test_out_inside_a_checkpoint_is_refused(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--overwrite --out META/weights`` used to replace the parent checkpoint's weights."""
    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    for local in ([], ["--local"]):
        argv = [*MT[:1], *local, *MT[2:], "--out", "ckpt/weights", "--overwrite"]
        assert "inside the meta-checkpoint" in run_bad(argv, tmp_path, capsys)
    load_meta_checkpoint(tmp_path / "ckpt")


# ---------------------------------------------------------------- priors fit flags
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--chunk-size", "0"], "--chunk-size"),
        (["--chunk-size", "-1"], "--chunk-size"),
        (["--tasks", "100000"], "--tasks"),
        (["--tasks", "0"], "--tasks"),
        (["--configs", "0"], "--configs"),
        (["--configs", "1000000000"], "fine-tuning runs"),
        (["--quantile", "nan"], "--quantile"),
        (["--quantile", "2"], "--quantile"),
        (["--quantile", "0"], "--quantile"),
        (["--shrink", "-1"], "--shrink"),
        (["--shrink", "inf"], "--shrink"),
        (["--rounds", "0"], "--rounds"),
        (["--portfolio", "0"], "--portfolio"),
        (["--refine-repeats", "-1"], "--refine-repeats"),
        (["--safe-rate", "nan"], "--safe-rate"),
        (["--safe-rate", "2"], "--safe-rate"),
        (["--max-steps", "0"], "--max-steps"),
        (["--max-steps", "1000000000000"], "--max-steps"),
        (["--seed", "-1"], "--seed"),
        (["--device", "bogus"], "device"),
        (["--objective", "best"], "invalid choice"),
    ],
)
def test_priors_fit_flags(
    extra: list[str],
    match: str,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    assert match in run_bad([*PF, *extra], tmp_path, capsys)


def test_priors_target_checked_before_the_fit(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A priors.json that cannot be written is refused before any fine-tuning (in well under
    the seconds a fit takes), with the checkpoint untouched."""
    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "priors.json").mkdir()
    t0 = time.perf_counter()
    assert "priors.json" in run_bad([*PF, "--tasks", "64", "--configs", "256"], tmp_path, capsys)
    assert time.perf_counter() - t0 < 5
    for argv in (["priors"], ["priors", "bogus"], ["priors", "fit"], ["priors", "show"]):
        run_bad(argv, tmp_path, capsys)


# -------------------------------------------------------------- tampered checkpoints
def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


def _edit_meta(fn: Callable[[Path, dict], None]) -> Setup:  # type: ignore[type-arg]
    def setup(d: Path) -> None:
        m = json.loads((d / "ckpt/meta.json").read_text())
        fn(d, m)
        (d / "ckpt/meta.json").write_text(json.dumps(m))

    return setup


def _edit_weights(fn: Callable[[dict], None]) -> Setup:  # type: ignore[type-arg]
    def edit(d: Path, m: dict) -> None:  # type: ignore[type-arg]
        p = d / "ckpt/weights/mlp.pt"
        sd = torch.load(p, weights_only=True)
        fn(sd)
        torch.save(sd, p)
        m["files"]["weights/mlp.pt"] = _sha(p)  # the attacker rewrites the checksum too

    return _edit_meta(edit)


def _truncate(d: Path, m: dict) -> None:  # type: ignore[type-arg]
    p = d / "ckpt/weights/mlp.pt"
    p.write_bytes(p.read_bytes()[:200])
    m["files"]["weights/mlp.pt"] = _sha(p)


def _point_weights(rel: str, copy_to: str | None = None) -> Setup:
    def edit(d: Path, m: dict) -> None:  # type: ignore[type-arg]
        if copy_to:
            shutil.copy(d / "ckpt/weights/mlp.pt", d / copy_to)
        target = str(d / copy_to) if rel == "ABS" else rel
        for c in m["candidates"].values():
            c["weights"] = target

    return _edit_meta(edit)


def _meta_is_dir(d: Path) -> None:
    (d / "ckpt/meta.json").unlink()
    (d / "ckpt/meta.json").mkdir()


def _set(key: str, value: object) -> Setup:
    return _edit_meta(lambda d, m: m.__setitem__(key, value))


def _spec(key: str, value: object) -> Setup:
    def edit(d: Path, m: dict) -> None:  # type: ignore[type-arg]
        for c in m["candidates"].values():
            c["model"][key] = value

    return _edit_meta(edit)


def _symlink_weights(d: Path) -> None:
    shutil.copy(d / "ckpt/weights/mlp.pt", d / "outside.pt")
    (d / "ckpt/weights/mlp.pt").unlink()
    (d / "ckpt/weights/mlp.pt").symlink_to(d / "outside.pt")


TAMPER: list[tuple[str, Setup, str]] = [
    ("meta.json is a directory", _meta_is_dir, "not a regular file"),
    ("meta.json binary", write("ckpt/meta.json", b"\xff\xfe\x00garbage"), "not JSON"),
    ("meta.json a list", write("ckpt/meta.json", "[1, 2]"), "not a raymeta"),
    ("meta.json deep", write("ckpt/meta.json", "[" * 100_000 + "]" * 100_000), "not JSON"),
    ("truncated .pt, checksum rewritten", _edit_meta(_truncate), "weights-only"),
    ("missing tensor", _edit_weights(lambda sd: sd.pop("head.bias")), "missing 'head.bias'"),
    ("extra tensor", _edit_weights(lambda sd: sd.__setitem__("x", torch.zeros(2))), "'x'"),
    ("wrong shape", _edit_weights(lambda sd: sd.__setitem__("head.bias", torch.zeros(3))), "(3,)"),
    (
        "int tensor",
        _edit_weights(lambda sd: sd.__setitem__("head.bias", torch.zeros(1).long())),
        "floating",
    ),
    (
        "weights ../outside.pt",
        _point_weights("../outside.pt", "outside.pt"),
        "outside the checkpoint",
    ),
    ("weights absolute", _point_weights("ABS", "abs.pt"), "outside the checkpoint"),
    (
        "weights unlisted",
        _point_weights("weights/other.pt", "ckpt/weights/other.pt"),
        "not in its manifest",
    ),
    ("weights symlink out", _symlink_weights, "outside the checkpoint"),
    ("manifest ../", _edit_meta(lambda d, m: m["files"].__setitem__("../x", "0" * 64)), "outside"),
    ("manifest a list", _set("files", [1]), "'files' must map"),
    ("manifest digest 5", _set("files", {"weights/mlp.pt": 5}), "sha256"),
    ("no candidates", _set("candidates", {}), "no model candidates"),
    ("candidates a string", _set("candidates", "x"), "no model candidates"),
    ("output_dim -1", _spec("output_dim", -1), "output_dim"),
    ("output_dim 2**40", _spec("output_dim", 2**40), "memory"),
    ("input_shape 10**12", _spec("input_shape", [10**12]), "memory"),
    ("model name bogus", _spec("name", "bogus"), "unknown model"),
    ("family a string", _set("family", "sinusoid"), "family"),
    ("version 7", _set("version", 7), "version"),
]


@pytest.mark.parametrize("name, tamper, match", TAMPER, ids=[t[0] for t in TAMPER])
@pytest.mark.parametrize("command", ["priors fit", "priors show", "tune"])
def test_tampered_checkpoint(
    command: str,
    name: str,
    tamper: Setup,
    match: str,
    priors_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    tamper(tmp_path)
    argv = {"priors fit": PF, "priors show": ["priors", "show", "--meta", "ckpt"], "tune": TU_OUT}
    assert match in run_bad(argv[command], tmp_path, capsys)


def test_checkpoint_errors_in_the_python_api(priors_ckpt: Path, tmp_path: Path) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    _edit_weights(lambda sd: sd.pop("head.bias"))(tmp_path)
    with pytest.raises(CheckpointError, match="missing 'head.bias'"):
        load_meta_checkpoint(tmp_path / "ckpt")


# ------------------------------------------------------------------------ tune
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
        (["--cpus-per-trial", "nan"], "--cpus-per-trial"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--gpus-per-trial", "inf"], "--gpus-per-trial"),
        (["--task-option", "val_size=abc"], "val_size must be an integer"),
        (["--task-option", "val_size=0"], "val_size"),
        (["--task-option", "val_size=2.5"], "val_size must be an integer"),
        (["--task-option", f"val_size={10**11}"], "memory"),
        (["--task-option", "shots=3"], "cannot be overridden"),
        (["--task-option", "val_size"], "KEY=VALUE"),
        (["--trials", "0"], "--trials"),
        (["--trials", "-1"], "--trials"),
        (["--trials", "1e9"], "--trials"),
        (["--trials", "1000000000"], "--trials"),
        (["--budget", "0"], "--budget"),
        (["--budget", "-5"], "--budget"),
        (["--budget", "1"], "needs --budget"),
        (["--interval", "0"], "--interval"),
        (["--members-per-trial", "0"], "--members-per-trial"),
        (["--members-per-trial", "1000000000"], "--members-per-trial"),
        (["--max-failures", "-1"], "--max-failures"),
        (["--seed", "-1"], "--seed"),
        (["--task", "sinusoid:-1"], "neither FAMILY:INDEX"),
        (["--task", "sinusoid:" + "9" * 30], "task index"),
        (["--task", "digits:0"], "trained on family"),
        (["--task", "nothere.parquet"], "neither FAMILY:INDEX"),
        (["--scheduler", "bogus"], "invalid choice"),
        (["--address", "ray://10.0.0.1:10001"], "--address"),
    ],
)
def test_tune_flags(
    extra: list[str],
    match: str,
    priors_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    assert match in run_bad([*TU_OUT, *extra], tmp_path, capsys)


@pytest.mark.parametrize(
    "text, match",
    [
        ("task_options: 5\n", "'task_options' must be a mapping"),
        ("task_options: [1]\n", "'task_options' must be a mapping"),
        ("task_options: {val_size: abc}\n", "val_size must be an integer"),
        ("trials: true\n", "'trials' must be an integer"),
        ("trials: 2.7\n", "'trials' must be an integer"),
        ("scheduler: [pbt]\n", "takes one value"),
        ("quiet: 5\n", "true or false"),
        ("cpus_per_trial: .inf\n", "finite"),
    ],
)
def test_tune_config_values(
    text: str, match: str, priors_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    (tmp_path / "c.yaml").write_text(text)
    assert match in run_bad([*TU_OUT, "--config", "c.yaml"], tmp_path, capsys)


def test_tune_python_api_refuses_bad_types(priors_ckpt: Path, tmp_path: Path) -> None:
    from raymeta.orchestration.tune.run import run_tune

    for kw in (
        {"trials": True},
        {"trials": 2, "cpus_per_trial": float("nan")},
        {"trials": 2, "task_options": 5},
        {"trials": 2, "budget": 2.5},
    ):
        with pytest.raises(ConfigError):
            run_tune(meta=priors_ckpt, task="sinusoid:0", out=tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------- quickstart
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-1"], "--steps"),
        (["--workers", "1000000"], "--workers"),
        (["--trials", "1000000000"], "--trials"),
        (["--tasks", "1000000000"], "--tasks"),
        (["--budget", "1"], "--budget"),
        (["--address", "ray://1.2.3.4:1"], "--address"),
    ],
)
def test_quickstart_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert match in run_bad(["quickstart", "--out", "out", *extra], tmp_path, capsys)


def test_quickstart_refuses_a_broken_earlier_checkpoint_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out/meta/meta.json").mkdir(parents=True)
    (tmp_path / "c.yaml").write_text("steps: [1]\n")
    run_bad(["quickstart", "--out", "out", "--config", "c.yaml"], tmp_path, capsys)
    assert "not a regular file" in run_bad(["quickstart", "--out", "out"], tmp_path, capsys)


# ------------------------------------------------------------ the Python API agrees
@pytest.mark.parametrize(
    "change, match",
    [
        ({"outer_lr": float("nan")}, "outer-lr must be a finite number"),
        ({"inner_lr": -5.0}, "inner-lr must be > 0"),
        ({"steps": True}, "steps must be an integer"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"meta_batch": 10**9}, "memory"),
        ({"first_order": 1}, "first-order must be true or false"),
        ({"family_options": 5}, "family-options must be a mapping"),
        ({"family_options": {"shots": 2.5}}, "shots must be an integer"),
        ({"model_options": {"widths": [-5]}}, "widths"),
        ({"seed": 2**70}, "seed must be <="),
    ],
)
def test_meta_train_config_validates(change: dict[str, object], match: str) -> None:
    from dataclasses import replace

    from raymeta.core.train import MetaTrainConfig, MetaTrainer

    cfg = replace(MetaTrainConfig(steps=2, meta_batch=2, val_tasks=2), **change)
    with pytest.raises(ConfigError, match=match) as info:
        MetaTrainer(cfg)
    assert "\n" not in str(info.value)


def test_alias_bomb_through_the_python_api_is_refused() -> None:
    from raymeta.core.train import MetaTrainConfig

    level: list[object] = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9  # shared references: 9**9 values if anything walked them
    with pytest.raises(ConfigError, match="more than"):
        MetaTrainConfig(family_options={"x": level}).validate()


# ---------------------------------------------------------- non-finite losses stop training
@pytest.mark.parametrize(
    "change", [{"inner_lr": 1e30}, {"outer_lr": 1e30, "outer_optimizer": "sgd"}]
)
def test_divergence_stops_training(change: dict[str, object]) -> None:
    from raymeta.core.train import DivergedError, MetaTrainConfig, meta_train

    cfg = MetaTrainConfig(steps=5, meta_batch=2, val_tasks=2, **change)  # type: ignore[arg-type]
    with pytest.raises(DivergedError, match="non-finite meta-loss") as info:
        meta_train(cfg)
    assert "lower --outer-lr / --inner-lr" in str(info.value)


def test_divergence_writes_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*MT, "--steps", "5", "--inner-lr", "1e30", "--out", "out"], tmp_path, capsys)
    assert "diverged" in line and "at step 1" in line


@pytest.mark.slow
def test_divergence_in_ray_train_writes_no_checkpoint(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Ray Train worker raises the same error; the run ends in one line, no checkpoint."""
    argv = ["meta-train", "--steps", "5", "--meta-batch", "2", "--val-tasks", "2"]
    argv += ["--inner-lr", "1e30", "--max-failures", "0", "--out", "out"]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(argv)
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("raymeta: error:")]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- real processes
@pytest.mark.parametrize(
    "argv, setup",
    [
        ([*MT, "--out", "out", "--config", "c.yaml"], write("c.yaml", BOMB)),
        ([*MT, "--out", "out", "--config", "c.yaml"], write("c.yaml", "a: " + "[" * 100_000)),
        ([*MT, "--out", "out", "--outer-lr", "-1"], None),
        ([*MT, "--out", "out", "--inner-lr", "1e30"], None),
        ([*MT, "--out", "out", "--model-option", "widths=abc"], None),
    ],
)
def test_bad_inputs_in_a_subprocess(argv: list[str], setup: Setup | None, tmp_path: Path) -> None:
    if setup is not None:
        setup(tmp_path)
    before = _snapshot(tmp_path)
    code = f"import sys; from raymeta.cli.main import main; sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr[-800:]
    assert len(lines) == 1 and lines[0].startswith("raymeta: error:"), p.stderr[-800:]
    assert _snapshot(tmp_path) == before
