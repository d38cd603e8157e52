"""The trust boundary of `raymeta tune` run directories: Ray never unpickles state that raymeta
did not sign for this run with the user's key; a resume drops reports of an abandoned timeline.

Unit tests sign and verify a hand-made experiment directory (no Ray); the Ray tests share one
tiny finished run (one ``fit``) and tamper with it for real, restoring it afterwards."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raymeta.errors import ConfigError
from raymeta.orchestration.tune.trust import (
    MANIFEST,
    StateSigner,
    Store,
    key_file,
    load_key,
)


class _Evil:
    """A pickle whose loading creates ``path``: what a crafted ``tuner.pkl`` would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture()
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "cfg" / "raymeta" / "run-key"
    monkeypatch.setenv("RAYMETA_KEY_FILE", str(p))
    return p


# ---- key file -----------------------------------------------------------------------------


def test_key_is_created_private_and_reused(own_key: Path) -> None:
    k = load_key()
    assert own_key.is_file() and len(k) == 32 and load_key() == k
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(own_key.parent.stat().st_mode) == 0o700


def test_key_location_defaults_outside_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYMETA_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_file() == tmp_path / "xdg" / "raymeta" / "run-key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_file() == tmp_path / "home" / ".config" / "raymeta" / "run-key"


def test_key_file_readable_by_others_or_not_ours_is_refused(own_key: Path) -> None:
    load_key()
    os.chmod(own_key, 0o644)
    with pytest.raises(ConfigError, match=r"accessible by others \(mode 644\); chmod 600") as e:
        load_key()
    assert "\n" not in str(e.value)
    os.chmod(own_key, 0o600)
    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(own_key, 12345, -1)
    with pytest.raises(ConfigError, match="owned by uid 12345, not you"):
        load_key()
    own_key.unlink()
    own_key.write_text("zz\n")
    os.chmod(own_key, 0o600)
    with pytest.raises(ConfigError, match="is damaged"):
        load_key()


# ---- sign / verify ------------------------------------------------------------------------


class _Run:
    """A hand-made experiment directory plus the driver staging directory Tune uploads from."""

    def __init__(self, root: Path, run: str = "run-a"):
        self.out, self.exp, self.staging = root / "out", root / "out/ray_results/exp", root / "stg"
        self.exp.mkdir(parents=True)
        self.staging.mkdir()
        self.signer = StateSigner(str(self.out), str(self.out / ".trust"), str(self.exp), run)
        (self.exp / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
        self.signer.sign_initial()
        self.snapshot({"v": 1})

    def snapshot(self, state: dict[str, Any], upload: bool = True) -> None:
        """What one Tune snapshot does: write staging, sign (raymeta's hook), upload."""
        (self.staging / "experiment_state-s1.json").write_text(json.dumps(state))
        (self.staging / "basic-variant-state-s1.json").write_bytes(pickle.dumps(state))
        self.signer.sign_snapshot(str(self.staging))
        if upload:
            shutil.copytree(self.staging, self.exp, dirs_exist_ok=True)

    def verify(self, signer: StateSigner | None = None) -> list[str]:
        return (signer or self.signer).verify(Store(str(self.exp)))


def _refused(run: _Run, reason: str, signer: StateSigner | None = None) -> None:
    with pytest.raises(ConfigError) as e:
        run.verify(signer)
    msg = str(e.value)
    assert "\n" not in msg and f"({reason})" in msg, msg
    assert msg.startswith(f"--out {run.out} holds Ray Tune state that raymeta did not sign")
    assert msg.endswith(f"remove {run.out / 'ray_results'} or pick another --out to start fresh")


def test_signed_state_verifies_and_trial_files_that_ray_never_unpickles_are_free(
    own_key: Path, tmp_path: Path
) -> None:
    run = _Run(tmp_path)
    run.snapshot({"v": 2})
    trial = run.exp / "trial_0" / "checkpoint_000000"
    trial.mkdir(parents=True)
    (trial / "state.pt").write_bytes(b"weights")  # loaded weights_only
    (trial / "trial.json").write_text("{}")  # JSON
    assert run.verify() == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: (e / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 2})), "tuner.pkl changed"),
        (lambda e: (e / "tuner.pkl").unlink(), "tuner.pkl is missing"),
        (
            lambda e: (e / "experiment_state-s1.json").write_text('{"v": 9}'),
            "experiment_state-s1.json changed",
        ),
        (
            lambda e: (e / "callback-states-x.pkl").write_bytes(b"x"),
            "callback-states-x.pkl is not signed",
        ),
        (
            lambda e: (e / "searcher-state-x.json").write_bytes(b"x"),
            "searcher-state-x.json is not signed",
        ),
        (
            lambda e: ((e / "t1").mkdir(), (e / "t1" / "error.pkl").write_bytes(b"x")),
            "t1/error.pkl is not signed",
        ),
    ],
)
def test_any_change_to_a_restorable_file_is_refused(
    own_key: Path, tmp_path: Path, change: Any, reason: str
) -> None:
    run = _Run(tmp_path)
    change(run.exp)
    _refused(run, reason)


def test_one_changed_byte_is_refused(own_key: Path, tmp_path: Path) -> None:
    run = _Run(tmp_path)
    p = run.exp / "basic-variant-state-s1.json"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    _refused(run, "basic-variant-state-s1.json changed")


def test_other_key_other_run_forged_manifest_or_no_signature_are_refused(
    own_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _Run(tmp_path)
    for other in (
        StateSigner(run.signer.out, run.signer.trust_dir, run.signer.experiment, "run-b"),
        StateSigner(run.signer.out, run.signer.trust_dir, str(tmp_path / "x"), "run-a"),
    ):
        with pytest.raises(ConfigError, match=r"\(signed for another run\)"):
            other.verify(Store(str(run.exp)))
    monkeypatch.setenv("RAYMETA_KEY_FILE", str(tmp_path / "other-key"))
    _refused(run, "signed with another key, or changed")
    monkeypatch.setenv("RAYMETA_KEY_FILE", str(own_key))
    m = Path(run.signer.trust_dir) / MANIFEST
    rec = json.loads(m.read_text())
    rec["files"]["tuner.pkl"] = "0" * 64  # re-pointing a hash without the key
    m.write_text(json.dumps(rec))
    _refused(run, "signed with another key, or changed")
    m.unlink()
    _refused(run, "no signature")


def test_damaged_signed_copy_is_refused(own_key: Path, tmp_path: Path) -> None:
    run = _Run(tmp_path)
    (next(Path(run.signer.trust_dir).glob("state-*")) / "tuner.pkl").write_bytes(b"x")
    _refused(run, "the signed copy of tuner.pkl is damaged")


def test_what_a_driver_killed_mid_upload_leaves_is_put_back_from_the_signed_copy(
    own_key: Path, tmp_path: Path
) -> None:
    """Signed before uploaded: the live file may be older, cut short or missing; never loaded,
    it is replaced by the signed copy (the newest signed snapshot)."""
    run = _Run(tmp_path)
    run.snapshot({"v": 2}, upload=False)  # killed before the upload: live holds v1
    live = run.exp / "experiment_state-s1.json"
    assert json.loads(live.read_text()) == {"v": 1}
    assert sorted(run.verify()) == ["basic-variant-state-s1.json", "experiment_state-s1.json"]
    assert json.loads(live.read_text()) == {"v": 2} and run.verify() == []
    run.snapshot({"v": 3, "pad": "x" * 1000}, upload=False)
    full = (run.staging / "experiment_state-s1.json").read_bytes()
    live.write_bytes(full[:100])  # upload cut short
    (run.exp / "basic-variant-state-s1.json").unlink()  # or not started
    assert len(run.verify()) == 2 and live.read_bytes() == full
    assert pickle.loads((run.exp / "basic-variant-state-s1.json").read_bytes())["v"] == 3


def test_unchanged_snapshots_write_nothing(own_key: Path, tmp_path: Path) -> None:
    run = _Run(tmp_path)
    m = Path(run.signer.trust_dir) / MANIFEST
    before = m.read_bytes()
    run.snapshot({"v": 1})
    assert m.read_bytes() == before and len(list(Path(run.signer.trust_dir).glob("state-*"))) == 1


# ---- history of an abandoned timeline -----------------------------------------------------


def test_truncate_history_keeps_what_the_restored_state_knows(tmp_path: Path) -> None:
    from raymeta.orchestration.tune._history import last_reports, truncate_history

    state = {
        "trial_data": [
            [json.dumps({"trial_id": "a"}), json.dumps({"last_result": {"wall_time": 2.0}})],
            [json.dumps({"trial_id": "b"}), json.dumps({"last_result": {}})],
        ]
    }
    last = last_reports(json.dumps(state).encode())
    assert last == {"a": 2.0, "b": float("-inf")}
    h = tmp_path / "history.jsonl"
    rows = [("a", 1.0), ("a", 2.0), ("a", 3.0), ("b", 1.5), ("c", 1.0)]
    h.write_text("".join(json.dumps({"trial": t, "wall_time": w}) + "\n" for t, w in rows) + '{"tr')
    assert truncate_history(h, last) == 4
    assert [json.loads(x)["wall_time"] for x in h.read_text().splitlines()] == [1.0, 2.0]
    assert truncate_history(h, last) == 0


# ---- through Ray: one tiny finished run, tampered with for real ---------------------------


@pytest.fixture(scope="module")
def finished(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from raymeta.core.checkpoint import save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, MetaTrainer
    from raymeta.orchestration.tune.run import run_tune

    root = tmp_path_factory.mktemp("trust")
    meta = save_meta_checkpoint(
        root / "meta", MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    )
    kw: dict[str, Any] = dict(
        meta=meta,
        task="sinusoid:2",
        trials=2,
        budget=2 * 10,
        interval=5,
        scheduler="random",
        prior="broad",
        out=root / "out",
        verbose=0,
    )
    rep = run_tune(**kw)
    exp = Path(rep["files"]["experiment"])
    yield {"kw": kw, "report": rep, "exp": exp, "out": root / "out", "root": root}


def _state_file(exp: Path) -> Path:
    return max(exp.glob("experiment_state-*.json"))


def _crafted_state(marker: Path) -> bytes:
    """An experiment state whose cloudpickle blob (decoded by Ray on restore) makes ``marker``."""
    blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Evil(marker)).hex()}
    return json.dumps({"trial_data": [], "runner_data": blob, "stats": {}}).encode()


@pytest.mark.ray
@pytest.mark.parametrize("target", ["tuner.pkl", "experiment_state", "planted"])
def test_crafted_state_in_a_finished_run_is_refused_and_never_loaded(
    finished: dict[str, Any], tmp_path: Path, target: str
) -> None:
    from raymeta.orchestration.tune.run import run_tune

    exp, marker = finished["exp"], tmp_path / "pwned"
    if target == "tuner.pkl":
        victim, crafted, reason = (
            exp / "tuner.pkl",
            pickle.dumps(_Evil(marker)),
            "tuner.pkl changed",
        )
    elif target == "experiment_state":
        victim = _state_file(exp)
        crafted, reason = _crafted_state(marker), f"{victim.name} changed"
    else:  # a newer state file, which Ray would pick as the newest
        victim = exp / "experiment_state-2999-01-01_00-00-00.json"
        crafted, reason = _crafted_state(marker), f"{victim.name} is not signed"
    original = victim.read_bytes() if victim.exists() else None
    victim.write_bytes(crafted)
    try:
        with pytest.raises(ConfigError) as e:
            run_tune(**finished["kw"])
    finally:
        if original is None:
            victim.unlink()
        else:
            victim.write_bytes(original)
    out = finished["out"]
    assert str(e.value) == (
        f"--out {out} holds Ray Tune state that raymeta did not sign for this run ({reason}); "
        f"it will not be loaded: remove {out / 'ray_results'} or pick another --out to start fresh"
    )
    assert not marker.exists()


@pytest.mark.ray
def test_cli_refusal_is_one_line_and_exit_2(
    finished: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymeta.cli.main import main

    kw, exp, marker = finished["kw"], finished["exp"], tmp_path / "pwned"
    original = (exp / "tuner.pkl").read_bytes()
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    argv = ["tune", "--meta", str(kw["meta"]), "--task", kw["task"], "--trials", "2"]
    argv += ["--budget", "20", "--interval", "5", "--scheduler", "random", "--prior", "broad"]
    argv += ["--out", str(kw["out"]), "--quiet"]
    try:
        capsys.readouterr()
        rc = main(argv)
    finally:
        (exp / "tuner.pkl").write_bytes(original)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not marker.exists()
    assert err[0].startswith("raymeta: error: --out ") and "(tuner.pkl changed)" in err[0]


@pytest.mark.ray
def test_legit_rerun_restores_and_drops_reports_of_an_abandoned_timeline(
    finished: dict[str, Any],
) -> None:
    """A rerun of the signed run restores it; history rows newer than the restored state (what
    a driver killed after its last snapshot leaves) are dropped, so the results do not shift."""
    from raymeta.orchestration.tune.run import run_tune
    from raymeta.results.reader import read_results

    hist = finished["out"] / "history.jsonl"
    lines = hist.read_text().splitlines()
    late = json.loads(lines[-1])
    late |= {"wall_time": late["wall_time"] + 5.0, "val_loss": 123.0, "best_val_loss": 0.0}
    hist.write_text("\n".join(lines) + "\n" + json.dumps(late) + "\n")
    rows = read_results(finished["out"] / "results").num_rows
    rep = run_tune(**finished["kw"])
    assert rep["best"] == finished["report"]["best"]
    assert hist.read_text().splitlines() == lines
    assert read_results(finished["out"] / "results").num_rows == rows
    assert all(t["best_val_loss"] > 0.0 for t in rep["trials"])


@pytest.mark.slow
def test_driver_killed_between_signing_and_upload_resumes_and_a_crafted_pickle_is_refused(
    tmp_path: Path,
) -> None:
    """Real SIGKILL of the `raymeta tune` driver right after it signed a snapshot, before Tune
    uploaded it: a crafted tuner.pkl planted into the killed run is refused (exit 2, one
    line, never loaded); with the real one back the rerun resumes from the signed snapshot and
    the history keeps no report of the abandoned timeline."""
    import subprocess
    import sys
    import time

    from raymeta.core.checkpoint import save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, MetaTrainer
    from raymeta.orchestration.tune._history import last_reports
    from raymeta.orchestration.tune.trust import KILL_AFTER_SIGN_ENV

    meta = save_meta_checkpoint(
        tmp_path / "meta", MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    )
    out, marker = tmp_path / "out", tmp_path / "pwned"
    cmd = [sys.executable, "-m", "raymeta.cli.main", "tune", "--meta", str(meta)]
    cmd += ["--task", "sinusoid:3", "--trials", "2", "--budget", str(2 * 600)]
    cmd += ["--interval", "20", "--prior", "broad", "--out", str(out), "--quiet"]
    env = {**os.environ, "RAY_ADDRESS": "", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    trigger, hist = tmp_path / "kill-now", out / "history.jsonl"
    killed = subprocess.Popen(
        cmd,
        env={**env, KILL_AFTER_SIGN_ENV: str(trigger)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while killed.poll() is None and time.time() < deadline:
        if hist.is_file() and len(hist.read_text().splitlines()) >= 6:
            trigger.touch()  # the driver dies right after its next signed snapshot
        time.sleep(0.2)
    killed.wait(timeout=60)
    assert killed.returncode == -9, (killed.stderr.read() if killed.stderr else "")[-2000:]
    assert not (out / "report.json").exists()
    trust = next((out / ".trust").glob("state-*"))
    signed = last_reports(max(trust.glob("experiment_state-*.json")).read_bytes())
    before = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    abandoned = {
        (r["trial"], r["wall_time"]) for r in before if r["wall_time"] > signed[r["trial"]]
    }

    exp = next((out / "ray_results").iterdir())
    state = max(trust.glob("experiment_state-*.json"))
    assert (exp / state.name).read_bytes() != state.read_bytes()  # the live state is stale
    original = (exp / "tuner.pkl").read_bytes()
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    err = [x for x in refused.stderr.splitlines() if x.startswith("raymeta: error:")]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert len(err) == 1 and "(tuner.pkl changed)" in err[0], refused.stderr
    assert not marker.exists()

    (exp / "tuner.pkl").write_bytes(original)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert all(t["error"] is None for t in rep["trials"]) and not marker.exists()
    after = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert not abandoned & {(r["trial"], r["wall_time"]) for r in after}
    assert max(r["trial_step"] for r in after) == 600
