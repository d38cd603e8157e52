"""Plug points without Ray: a user's model and family named by import path, entry point or the
object itself; candidates (meta-learned, multi-task pretrained, pretrained from a file); every
bad plugin is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymeta import plugins
from raymeta.cli.main import main
from raymeta.core.candidates import CandidateConfig
from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.core.models import MODELS, ModelSpec, build_model
from raymeta.core.train import MetaTrainConfig, preflight
from raymeta.errors import ConfigError
from raymeta.finetune import fit_priors
from raymeta.orchestration.meta_train.local import run_local_meta_train

PLUGIN = '''
import torch
from torch import nn

EXPLODE_AT = {"n": -1}


class Tiny(nn.Module):
    def __init__(self, input_shape, output_dim, width=8):
        super().__init__()
        n = 1
        for d in input_shape:
            n *= int(d)
        self.body = nn.Sequential(nn.Flatten(start_dim=-len(input_shape)), nn.Linear(n, width), nn.Tanh())
        self.head = nn.Linear(width, output_dim)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_factory(input_shape, output_dim, width=8):
    return Tiny(input_shape, output_dim, width)


class Raises(nn.Module):
    def __init__(self, input_shape, output_dim):
        raise ValueError("no GPU named 'tpu0' here")


class BatchNormNet(nn.Module):
    def __init__(self, input_shape, output_dim):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, output_dim)

    def forward(self, x):
        return self.head(self.body(x))


class NoStatsBatchNorm(nn.Module):
    def __init__(self, input_shape, output_dim):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(input_shape[0], 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU()
        )
        self.head = nn.Linear(8, output_dim)

    def forward(self, x):
        return self.head(self.body(x))


class LateBug(Tiny):
    """Fine for the first forward passes, then a bug in the user's own code."""

    calls = 0

    def forward(self, x):
        LateBug.calls += 1
        if LateBug.calls > 40:
            raise IndexError("user bug: list index out of range")
        return super().forward(x)


from torch import Tensor  # re-exported, not defined here
from torch.nn import Linear as Tiny2  # a Module, but not this package's


class Plain:
    def __init__(self, *args, **kwargs):
        pass
'''


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh user module outside raymeta, importable only through a sys.path entry."""
    name = f"userplug_{uuid.uuid4().hex[:8]}"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return name


def _cfg(**kw: object) -> MetaTrainConfig:
    base: dict[str, object] = {"steps": 4, "meta_batch": 2, "val_tasks": 2, "val_every": 2}
    return MetaTrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_import_path_builds_and_is_what_the_checkpoint_stores(plugin: str, tmp_path: Path) -> None:
    model = build_model(ModelSpec(f"{plugin}:Tiny", (1,), 1, {"width": 4}))
    assert model.head.in_features == 4
    ck = run_local_meta_train(_cfg(model=f"{plugin}:tiny_factory"), tmp_path / "ck", progress=False)
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    (cand,) = meta["candidates"].values()
    assert cand["model"]["name"] == f"{plugin}:tiny_factory"
    assert list(ck.candidates) == ["tiny_factory"]


def test_python_objects_and_runtime_registrations_are_stored_as_import_paths(
    plugin: str,
) -> None:
    mod = __import__(plugin)
    assert _cfg(model=mod.Tiny).validate().model == f"{plugin}:Tiny"
    MODELS["tiny-registered"] = mod.Tiny
    try:
        assert _cfg(model="tiny-registered").validate().model == f"{plugin}:Tiny"
    finally:
        del MODELS["tiny-registered"]
    from raymeta.tasks.sinusoid import Sinusoid

    # a built-in given as its object keeps the module path a worker imports
    assert plugins.canonical("model", MODELS["mlp"]) == "mlp"
    assert plugins.canonical("family", Sinusoid) == "sinusoid"
    from raymeta.tasks import make_family

    assert make_family(Sinusoid, shots=3).shots == 3  # the class itself, from Python


def test_entry_points_name_installed_plugins(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "site" / "userplug_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userplug-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[raymeta.models]\ntiny = {plugin}:Tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert plugins.entry_points("model")["tiny"] == f"{plugin}:Tiny"
    assert plugins.resolve("model", "tiny") is __import__(plugin).Tiny
    assert plugins.canonical("model", "tiny") == f"{plugin}:Tiny"
    with pytest.raises(ConfigError, match="unknown model 'tinyy' \\(choose from .*tiny"):
        plugins.resolve("model", "tinyy")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope_pkg_xyz.mod:Net", "cannot import model 'nope_pkg_xyz.mod:Net': no module named"),
        ("os:system", "standard library module 'os'"),
        ("builtins:eval", "standard library module 'builtins'"),
        ("PLUGIN:Missing", "has no 'Missing'"),
        ("PLUGIN:Tensor", "is a class but not a torch.nn.Module"),
        ("PLUGIN:Tiny2", "is defined in"),
        ("PLUGIN:EXPLODE_AT", "is not callable"),
        ("PLUGIN:tiny_factory.__globals__", "a private name"),
        ("torch:load", "torch is not a plugin"),
        ("raymeta.fileio:atomic_write_json", "raymeta is not a plugin"),
        ("PLUGIN:EXPLODE_AT.get", "an nn.Module class or a function"),
        ("bad path:X", "is not an import path"),
    ],
)
def test_bad_import_paths_are_one_line(plugin: str, ref: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plugins.canonical("model", ref.replace("PLUGIN", plugin))


def test_only_families_and_modules_are_called(plugin: str) -> None:
    """A crafted meta.json must not call an arbitrary function of the user's package with its
    options: a family is a TaskFamily subclass, a model an nn.Module class or a function."""
    with pytest.raises(ConfigError, match="not a subclass of raymeta.tasks.TaskFamily"):
        plugins.canonical("family", f"{plugin}:tiny_factory")
    with pytest.raises(ConfigError, match="is a class but not a torch.nn.Module"):
        plugins.canonical("model", f"{plugin}:Plain")
    assert plugins.canonical("model", f"{plugin}:tiny_factory") == f"{plugin}:tiny_factory"


def test_objects_another_process_cannot_import_are_refused() -> None:
    class Local(torch.nn.Module):
        pass

    with pytest.raises(ConfigError, match="defined inside a function"):
        plugins.canonical("model", Local)
    with pytest.raises(ConfigError, match="defined in the script being run"):
        plugins.check_portable("model", "__main__:Net")


def test_a_factory_that_raises_or_breaks_under_vmap_fails_before_training(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    argv = ["meta-train", "--local", "--steps", "2", "--meta-batch", "2", "--out", str(out)]
    assert main([*argv, "--model", f"{plugin}:Raises"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "raymeta: error: model 'Raises' failed to build: ValueError: no GPU named 'tpu0' here"
    )
    assert main([*argv, "--model", f"{plugin}:BatchNormNet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raymeta: error: model BatchNormNet breaks the 'no-running-stats' rule")
    assert "track_running_stats=False" in err and "\n" not in err
    # without running stats BatchNorm runs, but its second-order MAML gradient is wrong under
    # vmap: refused for maml, accepted for first-order algorithms
    assert main([*argv, "--model", f"{plugin}:NoStatsBatchNorm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "breaks the 'vmap' rule" in err and "GroupNorm" in err
    assert main([*argv, "--model", f"{plugin}:NoStatsBatchNorm", "--algo", "fomaml"]) == 0
    capsys.readouterr()
    import shutil

    shutil.rmtree(out)
    assert main([*argv, "--model", "nope_pkg_xyz:Net"]) == 2
    assert "no module named 'nope_pkg_xyz'" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".ck*"))


def test_a_bug_in_the_users_family_is_blamed_on_it_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"famplug_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from raymeta.tasks.sinusoid import Sinusoid\n"
        "class Broken(Sinusoid):\n"
        "    def sample(self, split, n_tasks, generator):\n"
        "        raise IndexError('off by one')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "ck"
    argv = ["meta-train", "--local", "--family", f"{name}:Broken", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "raymeta: error: 'Broken' raised IndexError before meta-training started: off by one"
    )
    assert not out.exists()


def test_a_bug_in_the_users_model_mid_run_is_blamed_on_it(plugin: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'LateBug' raised IndexError in meta-training"):
        run_local_meta_train(
            _cfg(model=f"{plugin}:LateBug", steps=50), tmp_path / "ck", progress=False
        )
    assert not (tmp_path / "ck").exists()


def test_candidate_cli_form_and_validation(tmp_path: Path) -> None:
    c = CandidateConfig.parse("wide model=mlp widths=[80,80] algo=reptile inner_lr=0.1")
    assert (c.name, c.model, c.algo, c.inner_lr) == ("wide", "mlp", "reptile", 0.1)
    assert c.model_options == {"widths": [80, 80]}
    for text, msg in [
        ("", "a name first"),
        ("x=1", "a name first"),
        ("9lives", "must start with a letter"),
        ("a algo=magic", "unknown algorithm"),
        ("a weights=/no/such.pt", "does not exist"),
        ("a inner_lr=-1", "inner_lr"),
        ("a model_options=abc widths=[3]", "must be a mapping"),
        ("a model_options=5", "must be a mapping"),
        ("a weights=~nosuchuser_xyz/w.pt", "does not exist"),
        (f"a weights={tmp_path}", "is a directory, not a weights file"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            CandidateConfig.parse(text).validate()
    with pytest.raises(ConfigError, match="two candidates are named 'a'"):
        _cfg(candidates=["a", "a algo=fomaml"]).validate()
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(candidates=[{"name": "a", "widths": [3]}]).validate()


def test_three_candidates_in_one_checkpoint(plugin: str, tmp_path: Path) -> None:
    """Meta-learned user model, the same model multi-task pretrained, and a user's own
    pretrained weights file: one checkpoint, one weights file each, all loadable."""
    mine = build_model(ModelSpec(f"{plugin}:Tiny", (1,), 1, {"width": 6}))
    torch.save({"state_dict": mine.state_dict(), "epoch": 3}, tmp_path / "mine.pt")
    cfg = _cfg(
        model=f"{plugin}:Tiny",
        candidates=[
            "maml",
            "pre algo=pretrain",
            f"mine weights={tmp_path / 'mine.pt'} width=6",
            "mlp model=mlp widths=[8]",
        ],
    )
    ck = run_local_meta_train(cfg, tmp_path / "ck", progress=False)
    assert list(ck.candidates) == ["maml", "pre", "mine", "mlp"]
    assert ck.candidates["pre"].info["algorithm"] == "pretrain"
    assert ck.candidates["mine"].info["algorithm"] == "pretrained"
    assert ck.candidates["mlp"].spec.name == "mlp"
    for k, v in mine.state_dict().items():
        assert torch.equal(ck.candidates["mine"].params[k], v)
    assert not (tmp_path / ".ck.candidates").exists()
    again = load_meta_checkpoint(tmp_path / "ck")
    assert again.config["candidates"][2]["weights"] == str(tmp_path / "mine.pt")
    # the same command again finds the finished run
    assert list(run_local_meta_train(cfg, tmp_path / "ck", progress=False).candidates) == list(
        ck.candidates
    )
    # model selection: one probability per candidate, from the meta-val tasks
    priors = fit_priors(ck, n_tasks=3, n_configs=8, max_steps=5, portfolio_size=2, select_tasks=0)
    assert list(priors.model_probs) == ["maml", "pre", "mine", "mlp"]
    assert abs(sum(priors.model_probs.values()) - 1) < 1e-9
    assert all(p > 0 for p in priors.model_probs.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                "b9",
                " ",
                "=",
                "[",
                "]",
                "{",
                "}",
                ",",
                "'",
                '"',
                "\x00",
                "é",
                "model=",
                "algo=",
                "weights=",
                "inner_lr=",
                "first_order=",
                "mlp",
                "maml",
                "pretrain",
                "1e9",
                "-1",
                "nan",
                "widths=[",
                "model_options={",
                "x:y",
                "os:system",
            ]
        ),
        max_size=12,
    ).map("".join)
)
def test_any_candidate_text_is_accepted_or_one_config_error(text: str) -> None:
    try:
        c = CandidateConfig.parse(text)
        c.validate()
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() or len(str(exc)) < 2000
    else:
        assert isinstance(c.name, str)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_weights_file_that_is_not_tensors_only_is_refused(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"head.weight": _Evil()}, evil, pickle_protocol=2)
    wrong = tmp_path / "wrong.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, wrong)
    out = tmp_path / "ck"
    base = ["meta-train", "--local", "--steps", "2", "--meta-batch", "2", "--out", str(out)]
    base += ["--model", f"{plugin}:Tiny", "--candidate", "a"]
    assert main([*base, "--candidate", f"evil weights={evil}"]) == 2
    err = capsys.readouterr()
    assert "is not a weights-only tensor file" in err.err and "pwned" not in err.out
    assert main([*base, "--candidate", f"wrong weights={wrong}"]) == 2
    assert "does not match model 'Tiny'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / ".ck.candidates").exists()
    assert pickle  # the refusal above is torch's weights-only unpickler, not ours


def test_preflight_runs_on_the_example_plugin() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        preflight(_cfg(model="my_plugin:ResidualMLP", family="my_plugin:Ramps"))
    finally:
        sys.path.remove(str(Path(__file__).resolve().parents[1] / "examples"))


def test_candidate_parts_resume_and_changed_ones_are_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished part (as a kill after candidate 'a' leaves it) is reused by the rerun; a
    part of a changed candidate is refused before anything trains, and --overwrite trains only
    the changed one again; a leftover parts folder next to a finished --out is cleaned up."""
    from raymeta.orchestration.meta_train.candidates import parts_dir

    out = tmp_path / "ck"
    cfg = _cfg(candidates=["a", "b algo=fomaml"])
    cfg.validate()
    run_local_meta_train(cfg.single(cfg.candidates[0]), parts_dir(out) / "a", progress=False)
    capsys.readouterr()
    ck = run_local_meta_train(cfg, out)
    log = capsys.readouterr().out
    assert "already holds the finished run of this config; nothing to do" in log  # 'a' reused
    assert list(ck.candidates) == ["a", "b"] and not parts_dir(out).exists()

    out2 = tmp_path / "ck2"
    before = _cfg(candidates=["a inner_lr=0.02", "b algo=fomaml"])
    run_local_meta_train(before.single(before.validate().candidates[1]), parts_dir(out2) / "b")
    stale = _cfg(candidates=["a inner_lr=0.02", "b algo=reptile"])
    with pytest.raises(ConfigError, match="candidate 'b' has a finished or unfinished run of"):
        run_local_meta_train(stale, out2, progress=False)
    assert not out2.exists() and not (parts_dir(out2) / "a").exists()  # nothing trained
    capsys.readouterr()
    ck2 = run_local_meta_train(stale, out2, overwrite=True)
    assert ck2.candidates["b"].info["algorithm"] == "reptile"
    assert ck2.candidates["a"].info["inner_lr"] == 0.02
    parts_dir(out2).mkdir()  # as a kill between the merge and the cleanup leaves it
    run_local_meta_train(stale, out2, progress=False)
    assert not parts_dir(out2).exists()
