"""Meta-checkpoint round trip, weights-only loading, corruption and atomicity."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from raymeta.core.checkpoint import (
    Candidate,
    MetaCheckpoint,
    load_meta_checkpoint,
    priors_file,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.models import ModelSpec, build_model
from raymeta.errors import CheckpointError
from raymeta.fileio import sha256_file
from raymeta.tasks.base import FamilySpec


def _ckpt() -> MetaCheckpoint:
    torch.manual_seed(0)
    spec = ModelSpec("mlp", (1,), 1, {"widths": [4, 3]})
    params = {k: v.detach().clone() for k, v in build_model(spec).named_parameters()}
    return MetaCheckpoint(
        family=FamilySpec("sinusoid", {"shots": 10}),
        candidates={"mlp": Candidate("mlp", spec, params, {"algorithm": "maml", "inner_lr": 0.01})},
        config={"algo": "maml", "steps": 3},
        metrics={"val_loss": 0.5},
    )


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != name and name in p.name)


def test_round_trip(tmp_path: Path) -> None:
    ck = _ckpt()
    path = save_meta_checkpoint(tmp_path / "ck", ck)
    back = load_meta_checkpoint(path)
    assert back.family == ck.family
    assert back.config == ck.config and back.metrics == ck.metrics
    cand = back.candidate("mlp")
    assert cand.spec == ck.candidates["mlp"].spec
    assert cand.info == ck.candidates["mlp"].info
    for k, v in ck.candidates["mlp"].params.items():
        assert torch.equal(cand.params[k], v)
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["files"]) == {"weights/mlp.pt"}
    assert {"raymeta", "torch", "numpy", "python"} <= set(meta["versions"])
    assert _leftovers(tmp_path, "ck") == []
    with pytest.raises(CheckpointError, match="no model candidate"):
        back.candidate("conv4")


def test_weights_load_with_weights_only(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    sd = torch.load(path / "weights" / "mlp.pt", weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    model = build_model(ModelSpec("mlp", (1,), 1, {"widths": [4, 3]}))
    model.load_state_dict(sd)


def test_existing_dir_needs_overwrite(tmp_path: Path) -> None:
    save_meta_checkpoint(tmp_path / "ck", _ckpt())
    with pytest.raises(CheckpointError, match="already exists"):
        save_meta_checkpoint(tmp_path / "ck", _ckpt())
    ck = _ckpt()
    ck.metrics = {"val_loss": 0.1}
    save_meta_checkpoint(tmp_path / "ck", ck, overwrite=True)
    assert load_meta_checkpoint(tmp_path / "ck").metrics == {"val_loss": 0.1}
    assert _leftovers(tmp_path, "ck") == []


def test_truncated_weights(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    w = path / "weights" / "mlp.pt"
    w.write_bytes(w.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_meta_checkpoint(path)


def test_tampered_weights(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    w = path / "weights" / "mlp.pt"
    data = bytearray(w.read_bytes())
    data[-30] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_meta_checkpoint(path)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    (path / "weights" / "mlp.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_meta_checkpoint(path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def _replace_weights(path: Path, obj: object, use_pickle: bool = False) -> None:
    """Swap in another weights file AND fix its checksum: only the loader's checks remain."""
    w = path / "weights" / "mlp.pt"
    if use_pickle:
        w.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, w)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["weights/mlp.pt"] = sha256_file(w)
    (path / "meta.json").write_text(json.dumps(meta))


def test_pickled_object_is_refused_not_executed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    _replace_weights(path, {"w": _Evil()}, use_pickle=True)
    with pytest.raises(CheckpointError):
        load_meta_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_weights_that_are_not_a_tensor_dict(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    _replace_weights(path, [torch.zeros(2)])
    with pytest.raises(CheckpointError, match="malformed|tensors"):
        load_meta_checkpoint(path)


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"format": "raymeta-meta-checkpoint", "vers', "truncated or not JSON"),
        ("[1, 2]", "not a raymeta meta-checkpoint"),
        ('{"format": "something-else"}', "not a raymeta meta-checkpoint"),
        ('{"format": "raymeta-meta-checkpoint", "version": 99}', "version 99"),
        ('{"format": "raymeta-meta-checkpoint", "version": 1, "files": {}}', "malformed"),
    ],
)
def test_bad_meta_json(tmp_path: Path, content: str, match: str) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    (path / "meta.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        load_meta_checkpoint(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_meta_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_meta_checkpoint(tmp_path / "empty")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    ck = _ckpt()
    ck.metrics = {"bad": object()}  # not JSON: fails after the weights were written
    with pytest.raises(CheckpointError, match="cannot write"):
        save_meta_checkpoint(tmp_path / "ck", ck)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    save_meta_checkpoint(tmp_path / "ck", _ckpt())
    before = {p.name: sha256_file(p) for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    ck = _ckpt()
    ck.config = {"bad": {1, 2}}
    with pytest.raises(CheckpointError):
        save_meta_checkpoint(tmp_path / "ck", ck, overwrite=True)
    after = {p.name: sha256_file(p) for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    assert before == after
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    load_meta_checkpoint(tmp_path / "ck")


def test_write_priors_is_checksummed(tmp_path: Path) -> None:
    path = save_meta_checkpoint(tmp_path / "ck", _ckpt())
    write_priors(path, {"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1}})
    back = load_meta_checkpoint(path)
    assert back.priors == {"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1}}
    assert _leftovers(tmp_path, "ck") == []
    pf = priors_file(path)
    assert pf is not None and pf.name.startswith("priors-")
    pf.write_text("{}")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_meta_checkpoint(path)
