"""Record the curves of raymeta's three population loops as they were BEFORE issue 13.

Issue 13 replaced ``priors.evaluate.evaluate_configs`` (priors fitting),
``orchestration.finetune.run_population`` (sweeps) and ``orchestration._packed.MemberGroup``
(packed Tune trials) by one fine-tuning runner, with the promise that each former entry point
gives identical curves for the same seeds. This script ran once, on commit 93c5960 (the last
commit before the refactor), and wrote ``curves.json``; ``tests/test_finetune_reference.py``
drives the new runner through the same inputs and compares. It imports the pre-refactor module
paths, so it no longer runs against the current tree; it is kept as the record of what was
measured and how.

The fine-tuning math runs in float64 where the old code allowed it: the old loops cast the
meta-init with ``Tensor.float()``, so that cast is redirected to ``double()`` while A-C run.
D (sweep units read from disk) and E (a whole priors fit) ran in float32, as the old code did.

    PYTHONPATH=. python tests/reference/record_curves.py tests/reference/curves.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import (  # type: ignore[attr-defined]
    Candidate,
    MetaCheckpoint,
    load_meta_checkpoint,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.priors import broad_prior, broad_space, fit_priors  # type: ignore[attr-defined]
from raymeta.tasks import Task, make_family

CONFIGS: list[dict[str, Any]] = [
    {"lr": 0.05, "optimizer": "sgd", "weight_decay": 1e-6, "steps": 12, "batch_size": 5},
    {"lr": 0.02, "optimizer": "sgd", "weight_decay": 0.1, "steps": 4, "batch_size": 3},
    {"lr": 0.01, "optimizer": "adam", "weight_decay": 1e-6, "steps": 9, "batch_size": 5},
    {"lr": 0.03, "optimizer": "adam", "weight_decay": 0.05, "steps": 7, "batch_size": 2},
    {"lr": 0.1, "optimizer": "sgd", "weight_decay": 1e-6, "steps": 3, "batch_size": 4},
    {"lr": 0.02, "optimizer": "adam", "weight_decay": 1e-3, "steps": 12, "batch_size": 1},
    {"lr": 2.0, "optimizer": "sgd", "weight_decay": 1e-6, "steps": 10, "batch_size": 5},
]
HEAD = [{**c, "adapt": "head" if i in (1, 4) else "all"} for i, c in enumerate(CONFIGS)]


def checkpoints() -> dict[str, MetaCheckpoint]:
    """A tiny regression and a tiny classification checkpoint (deterministic meta-training)."""
    reg = meta_train(MetaTrainConfig(steps=3, meta_batch=4, val_tasks=2)).to_checkpoint()
    cls = meta_train(
        MetaTrainConfig(
            family="digits",
            family_options={"ways": 3, "shots": 2, "queries": 3, "val_size": 4, "test_size": 4},
            model="mlp",
            model_options={"widths": [16]},
            steps=2,
            meta_batch=4,
            val_tasks=2,
        )
    ).to_checkpoint()
    return {"regression": reg, "classification": cls}


def double(task: Task) -> Task:
    """The task in float64 (inputs, and targets of a regression task)."""
    out = {}
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        t = getattr(task, k)
        out[k] = t.double() if t.is_floating_point() else t
    return Task(task.task_id, kind=task.kind, output_dim=task.output_dim, **out)


def plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def record_evaluate(ckpts: dict[str, MetaCheckpoint]) -> list[dict[str, Any]]:
    from raymeta.priors.evaluate import evaluate_configs  # type: ignore[import-not-found]

    out = []
    for kind, ck in ckpts.items():
        fam = make_family(ck.family)
        tasks = [double(fam.task("val", i)) for i in range(3)]
        name = ck.candidate().name
        configs = [{**c, "model": name} for c in HEAD]
        for objective, grid_max, chunk in (("final", None, 4), ("anytime", 12, 64)):
            table = evaluate_configs(
                ck, tasks, configs, 5, chunk, None, grid_max, 2, objective, "cpu"
            )
            out.append(
                {
                    "checkpoint": kind,
                    "tasks": [["val", i] for i in range(3)],
                    "configs": configs,
                    "seed": 5,
                    "chunk_size": chunk,
                    "grid_max": grid_max,
                    "first_index": 2,
                    "objective": objective,
                    "curves": plain(table.curves),
                    "steps": table.steps,
                    "init_loss": plain(table.init_loss),
                    "score": plain(table.score),
                }
            )
    return out


def record_sweep_population(ckpts: dict[str, MetaCheckpoint]) -> list[dict[str, Any]]:
    from raymeta.orchestration.finetune import run_population  # type: ignore[import-not-found]

    out = []
    cases = [
        ("regression", "meta", True, 20, 5, 8),
        ("regression", "scratch", False, 12, 4, 5),
        ("regression", "scratch", True, 9, 3, 4),
        ("classification", "meta", True, 10, 5, 6),
    ]
    for kind, init, pbt, budget, interval, m in cases:
        ck = ckpts[kind]
        task = double(make_family(ck.family).task("test", 1))
        cand = ck.candidate()
        prior = broad_prior(broad_space([cand.name], max_batch=len(task.x_train), max_steps=budget))
        configs = prior.sample(m, np.random.default_rng([3, 1]))
        res = run_population(
            task,
            cand,
            configs,
            init=init,
            budget=budget,
            interval=interval,
            seed=7,
            prior=prior,
            pbt=pbt,
        )
        out.append(
            {
                "checkpoint": kind,
                "task": ["test", 1],
                "init": init,
                "pbt": pbt,
                "budget": budget,
                "interval": interval,
                "seed": 7,
                "configs": plain(configs),
                "curves": [
                    {k: plain(v) for k, v in c.items() if k != "wall_s"} for c in res.curves
                ],
                "best_config": plain(res.best_config),
                "best_val": res.best_val,
                "test": res.test,
                "member_steps": res.member_steps,
                "events": plain(res.events),
                "best_params_abs_sum": {
                    k: float(v.abs().sum()) for k, v in res.best_params.items()
                },
            }
        )
    return out


def record_packed_trial(ckpts: dict[str, MetaCheckpoint]) -> list[dict[str, Any]]:
    """What ``tune_trainable`` does per interval, without Ray (which it only uses to report)."""
    from raymeta.orchestration._trainable import (  # type: ignore[import-not-found]
        Candidate as TrialCandidate,
    )
    from raymeta.orchestration._trainable import (  # type: ignore[import-not-found]
        TrialSetup,
        new_group,
    )

    out = []
    cases = [
        ("regression", "meta", 5, 12, 3, 2),
        ("regression", "scratch", 4, 8, 4, 0),
        ("classification", "meta", 8, 9, 3, 1),
    ]
    for kind, init, members, steps, interval, idx in cases:
        ck = ckpts[kind]
        task = double(make_family(ck.family).task("test", 2))
        prior = broad_prior(
            broad_space(list(ck.candidates), max_batch=len(task.x_train), max_steps=steps)
        )
        setup = TrialSetup(
            kind=task.kind,
            x_train=task.x_train,
            y_train=task.y_train,
            x_val=task.x_val,
            y_val=task.y_val,
            candidates={
                n: TrialCandidate(c.spec, c.params if init == "meta" else None)
                for n, c in ck.candidates.items()
            },
            prior=prior,
            members=members,
            steps_per_member=steps,
            interval=interval,
            seed=4,
        )
        config = prior.sample(1, np.random.default_rng([9, idx]))[0]
        group = new_group(setup, config, idx)
        first_configs = [dict(c) for c in group.configs]
        reports = []
        step = 0
        while step < steps:
            n = min(interval, steps - step)
            taken = group.train(task.x_train, task.y_train, n)
            step += n
            val = group.evaluate(task.x_val, task.y_val)
            rep: dict[str, Any] = {
                "trial_step": step,
                "taken": taken,
                "val": plain(val),
                "best_val": plain(group.best_val),
                "acc": plain(group.last_acc) if group.last_acc is not None else None,
            }
            if step < steps:
                rng = np.random.default_rng([setup.seed, idx, step])
                rep["events"] = plain(group.exploit_quarter(rng, prior.perturb))
            reports.append(rep)
        m = group.best_member()
        out.append(
            {
                "checkpoint": kind,
                "task": ["test", 2],
                "init": init,
                "members": members,
                "steps": steps,
                "interval": interval,
                "seed": 4,
                "trial_index": idx,
                "config": plain(config),
                "first_configs": plain(first_configs),
                "seeds": group.seeds,
                "reports": reports,
                "final_configs": plain(group.configs),
                "best_member": m,
                "best_params_abs_sum": {
                    k: float(v[m].abs().sum()) for k, v in group.best_params.items()
                },
            }
        )
    return out


def record_sweep_units(ckpts: dict[str, MetaCheckpoint], work: Path) -> list[dict[str, Any]]:
    from raymeta.orchestration.sweep_config import SweepConfig  # type: ignore[import-not-found]

    from raymeta.orchestration.sweep import run_unit  # type: ignore[import-not-found]

    out = []
    for kind, ck in ckpts.items():
        path = work / f"unit-{kind}"
        save_meta_checkpoint(path, ck)
        pri = fit_priors(load_meta_checkpoint(path), n_tasks=2, n_configs=8, max_steps=10)
        write_priors(path, pri.to_dict())
        cfg = SweepConfig(
            name="ref",
            meta=(path,),
            strategies=(),
            tasks=(0,),
            population=6,
            budget=10,
            interval=5,
            fixed_steps=4,
        )
        for strategy in (
            "meta+learned+pbt",
            "scratch+broad+random",
            "meta+fixed-default",
            "scratch+broad+pbt",
        ):
            unit = {"meta": str(path), "strategy": strategy, "label": strategy, "task": 3}
            rows = run_unit({**unit, "seed": 2}, cfg)
            out.append(
                {
                    "checkpoint": kind,
                    "strategy": strategy,
                    "task": 3,
                    "seed": 2,
                    "population": 6,
                    "steps_per_member": 10,
                    "interval": 5,
                    "fixed_steps": 4,
                    "priors": {"n_tasks": 2, "n_configs": 8, "max_steps": 10},
                    "rows": [
                        {k: r[k] for k in ("strategy", "task", "seed", "trial", "step", "metric")}
                        | {
                            "value": plain(r["value"]),
                            "hparams": json.dumps(r["hparams"], sort_keys=True),
                        }
                        for r in rows
                    ],
                }
            )
    return out


def record_fit(ckpts: dict[str, MetaCheckpoint]) -> list[dict[str, Any]]:
    out = []
    for objective in ("final", "anytime"):
        kw = {
            "n_tasks": 3,
            "n_configs": 12,
            "seed": 1,
            "max_steps": 15,
            "refine_repeats": 1,
            "objective": objective,
        }
        pri = fit_priors(ckpts["regression"], **kw).to_dict()
        pri["info"].pop("fit_seconds")
        out.append({"checkpoint": "regression", "kwargs": kw, "priors": plain(pri)})
    return out


def main(dest: str) -> None:
    torch.manual_seed(0)
    ckpts = checkpoints()
    record: dict[str, Any] = {"commit": "93c5960", "torch": torch.__version__}
    as_float = torch.Tensor.float
    torch.Tensor.float = torch.Tensor.double  # type: ignore[method-assign]  # float64, see above
    try:
        ckpts64 = {
            k: MetaCheckpoint(
                c.family,
                {
                    n: Candidate(cd.name, cd.spec, {p: v.double() for p, v in cd.params.items()})
                    for n, cd in c.candidates.items()
                },
            )
            for k, c in ckpts.items()
        }
        torch.set_default_dtype(torch.float64)
        record["evaluate_configs"] = record_evaluate(ckpts64)
        record["run_population"] = record_sweep_population(ckpts64)
        record["packed_trial"] = record_packed_trial(ckpts64)
    finally:
        torch.Tensor.float = as_float  # type: ignore[method-assign]
        torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as d:
        record["sweep_units"] = record_sweep_units(ckpts, Path(d))
    record["fit_priors"] = record_fit(ckpts)
    Path(dest).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
