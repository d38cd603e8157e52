"""Fitting priors on a tiny sinusoid meta-checkpoint: reproducibility, storage, CLI, bad input,
and the population evaluation checked against plain torch.optim fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from raymeta.cli.main import main
from raymeta.core.checkpoint import (
    MetaCheckpoint,
    load_meta_checkpoint,
    priors_file,
    write_priors,
)
from raymeta.core.models import build_model
from raymeta.errors import CheckpointError, ConfigError, DataError
from raymeta.finetune import fit_priors
from raymeta.finetune.evaluate import curve_steps, eval_device, evaluate_configs
from raymeta.finetune.fit import val_tasks
from raymeta.priors import VERSION, Priors, broad_prior, load_priors
from raymeta.tasks import Task, TaskFamily, make_family

SMALL = {"n_tasks": 3, "n_configs": 6, "max_steps": 6}


def _priors_path(d: Path) -> Path:
    pf = priors_file(d)
    assert pf is not None
    return pf


def without_time(p: Priors) -> dict:
    """The priors without what depends on the machine's state: the fit's duration and its
    memory plan (the default budget is a share of the memory available when the fit starts)."""
    d = p.to_dict()
    d["info"].pop("fit_seconds")
    d["info"].pop("memory")
    return d


def test_fit_then_sample_is_reproducible_for_a_seed(ckpt: MetaCheckpoint) -> None:
    a, b = fit_priors(ckpt, seed=3, **SMALL), fit_priors(ckpt, seed=3, **SMALL)
    assert without_time(a) == without_time(b)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    assert a.learned.sample(10, rng_a) == b.learned.sample(10, rng_b)
    assert len(a.portfolio) == SMALL["n_configs"]  # portfolio size 8 capped at the 6 configs
    assert a.model_probs == {"mlp": 1.0}
    assert a.info["portfolio_regret"] == sorted(a.info["portfolio_regret"], reverse=True)
    for c in a.learned.sample(50, np.random.default_rng(1)):
        assert a.space.validate(c) == c


def test_priors_stored_checksummed_and_loaded(
    ckpt_dir: Path, ckpt: MetaCheckpoint, tmp_path: Path
) -> None:
    import shutil

    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    with pytest.raises(CheckpointError, match="no priors.json"):
        load_priors(load_meta_checkpoint(d))
    pr = fit_priors(ckpt, seed=0, **SMALL)
    write_priors(d, pr.to_dict())
    back = load_priors(load_meta_checkpoint(d))
    assert back.to_dict() == json.loads(json.dumps(pr.to_dict()))
    pf = priors_file(d)
    assert pf is not None
    pf.write_text(pf.read_text().replace(f'"version": {VERSION}', f'"version": {VERSION + 1}'))
    with pytest.raises(CheckpointError, match="checksum"):
        load_meta_checkpoint(d)


def test_population_evaluation_matches_torch_optim_reference(ckpt: MetaCheckpoint) -> None:
    """Full-batch members (no minibatch randomness) equal a plain per-config torch.optim loop."""
    family = make_family(ckpt.family)
    tasks = val_tasks(family, 2)
    n = int(tasks[0].x_train.shape[0])
    configs = [
        {
            "lr": 0.02,
            "optimizer": "sgd",
            "weight_decay": 1e-3,
            "steps": 4,
            "batch_size": n,
            "adapt": "all",
            "model": "mlp",
        },
        {
            "lr": 0.01,
            "optimizer": "adam",
            "weight_decay": 1e-6,
            "steps": 5,
            "batch_size": n,
            "adapt": "all",
            "model": "mlp",
        },
        {
            "lr": 0.05,
            "optimizer": "adam",
            "weight_decay": 0.01,
            "steps": 2,
            "batch_size": n,
            "adapt": "head",
            "model": "mlp",
        },
    ]
    table = evaluate_configs(ckpt, tasks, configs, seed=0, chunk_size=2)
    assert table.steps == curve_steps(5) == [0, 1, 2, 5]
    cand = ckpt.candidate()
    model = build_model(cand.spec)
    for t, task in enumerate(tasks):
        for j, c in enumerate(configs):
            params = {k: v.clone().requires_grad_(True) for k, v in cand.params.items()}
            train = [v for k, v in params.items() if c["adapt"] == "all" or k.startswith("head.")]
            opt_cls = torch.optim.Adam if c["optimizer"] == "adam" else torch.optim.SGD
            opt = opt_cls(train, lr=c["lr"], weight_decay=c["weight_decay"])
            for _ in range(c["steps"]):
                opt.zero_grad()
                loss = (
                    (functional_call(model, params, (task.x_train,)) - task.y_train) ** 2
                ).mean()
                loss.backward()
                opt.step()
            with torch.no_grad():
                val = ((functional_call(model, params, (task.x_val,)) - task.y_val) ** 2).mean()
            assert table.final[t, j] == pytest.approx(float(val), rel=1e-4, abs=1e-5)
    whole = evaluate_configs(ckpt, tasks, configs, seed=0, chunk_size=4096)
    np.testing.assert_allclose(whole.curves, table.curves, rtol=1e-5)


def test_rounds_equal_one_evaluation_of_all_configs(ckpt: MetaCheckpoint) -> None:
    """Round tables joined with ``concat`` equal one table of every config (same seeds, grid)."""
    tasks = val_tasks(make_family(ckpt.family), 2)
    sp = fit_priors(ckpt, seed=1, **SMALL).space
    configs = broad_prior(sp).sample(6, np.random.default_rng(0))
    whole = evaluate_configs(ckpt, tasks, configs, seed=4, grid_max=6)
    a = evaluate_configs(ckpt, tasks, configs[:4], seed=4, grid_max=6)
    b = evaluate_configs(ckpt, tasks, configs[4:], seed=4, grid_max=6, first_index=4)
    joined = a.concat(b)
    assert joined.steps == whole.steps == curve_steps(6)
    np.testing.assert_allclose(joined.curves, whole.curves, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joined.init_loss, whole.init_loss, rtol=1e-6)


def test_two_round_fit_is_reproducible_and_in_bounds(ckpt: MetaCheckpoint) -> None:
    kw = SMALL | {"n_configs": 8, "rounds": 2}
    a, b = fit_priors(ckpt, seed=2, **kw), fit_priors(ckpt, seed=2, **kw)
    assert without_time(a) == without_time(b)
    assert a.info["rounds"] == [4, 4]
    for c in a.portfolio + a.learned.sample(30, np.random.default_rng(0)):
        assert a.space.validate(c) == {k: c[k] for k in a.space.names()}


class NoValFamily(TaskFamily):
    """A family whose meta-val split is empty (like a Parquet table with no val tasks)."""

    name, kind, input_shape, output_dim = "noval", "regression", (1,), 1

    def sample(self, split, n_tasks, generator):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def task(self, split, index) -> Task:  # type: ignore[no-untyped-def]
        raise DataError(f"no {split} tasks")

    def options(self) -> dict:
        return {}


def test_family_without_val_tasks_is_one_line_error() -> None:
    with pytest.raises(DataError, match="has no meta-val tasks"):
        val_tasks(NoValFamily(), 4)


def test_cli_fit_show_and_bad_input(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    assert main(["priors", "show", "--meta", str(d)]) == 2
    assert "no priors.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a flag out of range is a usage error (argparse)
        main(["priors", "fit", "--meta", str(d), "--tasks", "1"])
    assert exc.value.code == 2
    assert "--tasks: value must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["priors", "fit", "--meta", str(d), "--tasks", "3", "--configs", "2"])
    assert "--configs: value must be >= 4" in capsys.readouterr().err
    assert priors_file(d) is None
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(f"meta: {d}\ntasks: 3\nconfigs: 5\nmax_steps: 4\n")
    assert main(["priors", "fit", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "learned prior" in out and "portfolio" in out
    assert main(["priors", "show", "--meta", str(d)]) == 0
    shown = capsys.readouterr().out
    assert "3 meta-val tasks x 5 configs" in shown and "lr" in shown
    assert "fitted for --objective final, --max-steps 4" in shown  # what the priors serve
    assert "joint part" in shown  # the kernel-mixture component is shown with its centres
    with pytest.raises(SystemExit):
        main(["priors", "fit", "--meta", str(d), "--safe-rate", "1.5"])
    assert "--safe-rate: value must be <= 1" in capsys.readouterr().err
    pj = json.loads(_priors_path(d).read_text())
    write_priors(d, pj | {"version": 7})  # checksum valid, version unknown
    assert main(["priors", "show", "--meta", str(d)]) == 2
    err = capsys.readouterr().err
    assert "version 7" in err and err.count("\n") == 1
    _priors_path(d).write_text("{}")
    assert main(["priors", "show", "--meta", str(d)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_fit_device_is_checked_before_any_fine_tuning(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    assert eval_device("cpu") == torch.device("cpu")
    bad = [("tpu", "unknown device 'tpu'"), ("meta", "unknown device 'meta'")]
    if not torch.cuda.is_available():
        bad.append(("cuda", "torch.cuda is not available"))
    for name, needle in bad:
        with pytest.raises(ConfigError, match=needle):
            eval_device(name)
    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    for name, needle in bad:
        assert main(["priors", "fit", "--meta", str(d), "--tasks", "3", "--device", name]) == 2
        err = capsys.readouterr().err
        assert err.startswith("raymeta: error: ") and err.count("\n") == 1 and needle in err
    assert priors_file(d) is None


@pytest.mark.ray
def test_fit_as_a_ray_task_writes_what_the_local_fit_writes(
    ray_session: None, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`priors fit --address`: the fit runs as a Ray task holding --cpus (its progress comes
    back to the driver's stderr) and the driver writes the same priors a local fit computes
    for the seed (the fit is a pure function of checkpoint, config and seed on CPU)."""
    import shutil

    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    sizes = {"n_tasks": 2, "n_configs": 4, "max_steps": 4, "refine_repeats": 1}
    args = ["priors", "fit", "--meta", str(d), "--tasks", "2", "--configs", "4"]
    args += ["--max-steps", "4", "--refine-repeats", "1", "--select-tasks", "0", "--seed", "3"]
    assert main([*args, "--address", "auto", "--gpus", "1"]) == 2  # the 2-CPU test cluster
    err = capsys.readouterr().err
    assert "the priors fit needs 1 GPUs" in err and err.count("\n") == 1
    assert priors_file(d) is None
    assert main([*args, "--address", "auto", "--cpus", "1"]) == 0
    err = capsys.readouterr().err
    assert "priors fit: fine-tuning runs: 16/16 (100%)" in err
    remote = load_priors(load_meta_checkpoint(d))
    local = fit_priors(load_meta_checkpoint(ckpt_dir), seed=3, select_tasks=0, **sizes)
    assert without_time(remote) == without_time(local)


def test_a_small_memory_budget_forces_chunks_and_changes_no_number(
    ckpt: MetaCheckpoint,
) -> None:
    """Chunks sized from --memory-budget: a budget of 5 members' estimate trains the fit's 54
    runs in chunks of 5, with the priors of one chunk (member randomness is counter-based; a
    chunk of other members vmaps the same member's float32 arithmetic at another batch size,
    which may round differently: the priors agree to 1e-6, configs and choices exactly); the
    plan is recorded in priors.json's info and reported in one line."""
    from raymeta.finetune.fit import PriorFitConfig, memory_plan

    sizes = {**SMALL, "select_tasks": 0, "seed": 2}
    task = val_tasks(make_family(ckpt.family), 1)[0]
    plan = memory_plan(ckpt, task, PriorFitConfig(**sizes))
    assert plan.budget_source == "default" and plan.chunk_size >= 54  # all 54 runs fit at once
    budget = plan.fixed + 5 * plan.per_member + plan.per_member // 2
    lines: list[str] = []
    small = fit_priors(ckpt, memory_budget=budget, log=lines.append, **sizes)
    mem = small.info["memory"]
    assert mem["chunk_size"] == 5 and mem["budget"] == budget
    assert mem["budget_source"] == "--memory-budget" and mem["per_member"] == plan.per_member
    assert len(lines) == 1 and "chunks of 5 members" in lines[0]
    whole = fit_priors(ckpt, chunk_size=10**6, **sizes)
    assert whole.info["memory"]["chunk_size"] == 10**6
    assert whole.info["memory"]["budget_source"] == "--chunk-size"
    _same_up_to_rounding(without_time(small), without_time(whole))


def _same_up_to_rounding(a: object, b: object, path: str = "") -> None:
    """``a == b`` except that floats may differ by float32 rounding (relative 1e-6)."""
    if isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same_up_to_rounding(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _same_up_to_rounding(u, v, f"{path}[{i}]")
    else:
        assert a == b, path
