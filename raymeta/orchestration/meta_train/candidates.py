"""Meta-train several model candidates into one meta-checkpoint (see ``core/candidates.py``).

Each trained candidate is an ordinary one-model run (``--local`` in this process, or a Ray
Train job) written to its own part, ``<parent>/.<out-name>.candidates/<candidate>/``; a part
resumes like any run, and a finished part is not trained again, so rerunning the same command
after a crash or Ctrl-C continues with the candidate that was interrupted. Pretrained
candidates are read from their weights files. Everything a candidate could refuse (unknown
model, bad options, a model that breaks under vmap, a weights file that does not fit the
model, a part holding a run of a changed candidate) is checked for *all* candidates before the
first one trains. Once every part exists, the merged checkpoint is written to ``--out`` in one
atomic swap and the parts are removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raymeta.core.candidates import CandidateConfig, pretrained
from raymeta.core.checkpoint import (
    Candidate,
    MetaCheckpoint,
    load_meta_checkpoint,
    save_meta_checkpoint,
)
from raymeta.core.contract import check_model_runs
from raymeta.core.models import ModelSpec, build_model, check_model_fits
from raymeta.core.train import MetaTrainConfig
from raymeta.errors import ConfigError
from raymeta.lock import locks_output
from raymeta.orchestration.meta_train.run_state import fingerprint, out_status, plan_run
from raymeta.paths import probe_writable
from raymeta.plugins import Kind
from raymeta.tasks import FamilySpec, make_family

TrainOne = Callable[[MetaTrainConfig, Path, bool], MetaCheckpoint]  # (config, part, overwrite)
Preflight = Callable[[MetaTrainConfig], None]


def parts_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.candidates"


def _spec_for(cfg: MetaTrainConfig, cand: CandidateConfig, family: Any) -> ModelSpec:
    single = cfg.single(cand)
    name = family.default_model() if single.model == "auto" else single.model
    return ModelSpec(name, family.input_shape, family.output_dim, dict(single.model_options))


def _changed(single: MetaTrainConfig, part: Path) -> bool:
    """Whether ``part`` holds a finished or unfinished run of another config."""
    try:
        plan_run(single, part)
    except ConfigError:
        return True
    return False


@locks_output("out")
def train_candidates(
    cfg: MetaTrainConfig,
    out: str | Path,
    train_one: TrainOne,
    preflight: Preflight,
    overwrite: bool = False,
    progress: bool = True,
    check_name: Callable[[Kind, str], None] | None = None,
) -> MetaCheckpoint:
    """Train or load every candidate of ``cfg`` and write them as one checkpoint to ``out``.

    ``preflight`` checks a trained candidate's config, ``check_name(kind, name)`` every model
    and family name (the Ray path refuses names a worker cannot import). With ``overwrite`` only
    the candidates whose config changed are trained again; finished unchanged ones are kept."""
    cfg = cfg.validate()
    if not cfg.candidates:
        raise ConfigError("train_candidates needs a config with candidates")
    out_p = Path(out).expanduser().absolute()
    parts = parts_dir(out_p)
    status = out_status(out_p, fingerprint(cfg))
    if status == "same" and not overwrite:
        shutil.rmtree(parts, ignore_errors=True)  # left by a kill between merge and cleanup
        if progress:
            print(
                f"meta-train: {out_p} already holds the finished run of this config; nothing to do"
            )
        return load_meta_checkpoint(out_p)
    if status not in ("absent", "empty", "same") and not overwrite:
        raise ConfigError(f"--out {out_p} already holds {status} (pass --overwrite to replace it)")
    probe_writable(out_p)
    family = make_family(FamilySpec(cfg.family, cfg.family_options))
    check: Callable[[Kind, str], None] = check_name or (lambda kind, name: None)
    check("family", cfg.family)
    ready: dict[str, Candidate] = {}
    changed: set[str] = set()
    for cand in cfg.candidates:  # everything checked before anything trains
        spec = _spec_for(cfg, cand, family)
        check("model", spec.name)
        if cand.weights is not None:
            check_model_fits(spec, what=f"candidate {cand.name!r}")
            ready[cand.name] = pretrained(cand, spec)
            check_model_runs(build_model(spec), spec.input_shape, spec.output_dim)
            continue
        single = cfg.single(cand)
        preflight(single)
        if _changed(single, parts / cand.name):
            if not overwrite:
                raise ConfigError(
                    f"candidate {cand.name!r} has a finished or unfinished run of another config "
                    f"in {parts} (pass --overwrite to train the changed candidates again; "
                    "finished unchanged ones are kept)"
                )
            changed.add(cand.name)
    trained = [c for c in cfg.candidates if c.weights is None]
    cands: dict[str, Candidate] = {}
    for i, cand in enumerate(cfg.candidates, 1):
        if cand.name in ready:
            cands[cand.name] = ready[cand.name]
            if progress:
                print(
                    f"meta-train: candidate {cand.name!r} ({i}/{len(cfg.candidates)}): "
                    f"pretrained weights from {cand.weights}"
                )
            continue
        single = cfg.single(cand)
        if progress:
            k = trained.index(cand) + 1
            print(
                f"meta-train: candidate {cand.name!r} ({i}/{len(cfg.candidates)}, trained "
                f"{k}/{len(trained)}): {single.model} with {single.algo}"
            )
        parts.mkdir(parents=True, exist_ok=True)
        part = train_one(single, parts / cand.name, cand.name in changed)
        only = next(iter(part.candidates.values()))
        info = {**only.info, "candidate": cand.to_dict()}
        cands[cand.name] = Candidate(cand.name, only.spec, only.params, info)
    metrics = {
        "candidates": {n: c.info.get("metrics", {}) for n, c in cands.items()},
    }
    merged = MetaCheckpoint(
        family=FamilySpec(cfg.family, family.options()),
        candidates=cands,
        config=cfg.to_dict(),
        metrics=metrics,
    )
    save_meta_checkpoint(out_p, merged, overwrite=True)
    shutil.rmtree(parts, ignore_errors=True)
    if progress:
        print(f"meta-train: wrote {len(cands)} candidates ({', '.join(cands)}) to {out_p}")
    return load_meta_checkpoint(out_p)
