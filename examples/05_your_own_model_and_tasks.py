"""Your own model and your own task family, end to end on Ray: meta-train two candidates on 2
Ray Train workers, fit priors (including which candidate to pick), tune a held-out task with a
Ray Tune population, then use the tuned model.

The model (``ResidualMLP``) and the family (``Ramps``) live in ``my_plugin.py`` next to this
script: a plain module outside the raymeta package. raymeta names them by import path
(``my_plugin:ResidualMLP``), stores that path in the meta-checkpoint, and every Ray worker
imports the module to rebuild them. Check your own with ``raymeta.testing`` first (below).

Run from the repository root (a few minutes on a 2-core CPU):

    .venv/bin/python examples/05_your_own_model_and_tasks.py
    .venv/bin/python examples/05_your_own_model_and_tasks.py --smoke-test   # tiny, for the tests

The same from the shell:

    PYTHONPATH=examples raymeta meta-train --family my_plugin:Ramps --model my_plugin:ResidualMLP \\
        --workers 2 --out ramps-meta --candidate 'maml' --candidate 'pretrained algo=pretrain'
    PYTHONPATH=examples raymeta priors fit --meta ramps-meta --objective anytime --max-steps 60
    PYTHONPATH=examples raymeta tune --meta ramps-meta --task my_plugin:Ramps:3 --out ramps-tune
    PYTHONPATH=examples raymeta predict --run ramps-tune --input new_rows.parquet --out pred.parquet

On a cluster, ship the module with the job:
``ray job submit --working-dir examples -- raymeta meta-train --family my_plugin:Ramps ...``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from my_plugin import Ramps, ResidualMLP  # the user's module, next to this script

import raymeta
from raymeta.testing import check_model, check_task_family


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    small = ap.parse_args().smoke_test
    # 1. the contract kits: the same checks raymeta's own models and families pass
    check_model(ResidualMLP, (1,), 1, {"width": 16})
    check_task_family(Ramps())
    print("contract: ResidualMLP and Ramps pass raymeta.testing")

    base = os.environ.get("RAYMETA_EXAMPLE_TMP")
    with tempfile.TemporaryDirectory(prefix="raymeta-example-", dir=base) as d:
        work = Path(d)
        steps, per_member = (6, 10) if small else (300, 60)
        # 2. two candidates of the user's model on 2 Ray Train workers: meta-learned (MAML) and
        #    multi-task pretrained; the objects themselves are stored by their import paths
        cfg = raymeta.MetaTrainConfig(
            family=Ramps,
            model=ResidualMLP,
            model_options={"width": 16 if small else 32},
            steps=steps,
            meta_batch=8 if small else 16,
            val_tasks=4 if small else 32,
            val_every=max(steps // 3, 1),
            candidates=["maml", "pretrained algo=pretrain"],
        )
        meta = work / "ramps-meta"
        raymeta.run_meta_train(cfg, meta, workers=2, progress=not small)
        # 3. priors on the family's meta-validation tasks: hyperparameters and P(candidate)
        fit = raymeta.PriorFitConfig(
            n_tasks=3 if small else 16,
            n_configs=8 if small else 48,
            max_steps=per_member,
            objective="anytime",
            select_population=4 if small else 8,  # strategy selection: tune's "auto"
        )
        priors = raymeta.fit_priors(raymeta.load_meta_checkpoint(meta), fit)
        raymeta.write_priors(meta, priors.to_dict())
        probs = ", ".join(f"{k} {v:.2f}" for k, v in priors.model_probs.items())
        print(f"priors: P(best candidate) {probs}")
        # 4. tune held-out task 3 of the family with a PBT population of 2 x 4 packed members
        tuned = work / "ramps-tune"
        request = raymeta.TuneRequest(
            meta,
            "my_plugin:Ramps:3",
            trials=2,
            members_per_trial=4,
            budget=2 * 4 * per_member,
            out=tuned,
        )
        report = raymeta.tune(request, verbose=0)
        best = report["best"]
        print(
            f"tune: best candidate {best['config']['model']!r}, val {best['val_loss']:.4f}, "
            f"test {best['test_loss']:.4f}"
        )
        # 5. the tuned model back out: a ready nn.Module, and batch prediction on new inputs
        model = raymeta.load_model(tuned)
        task = Ramps().task("test", 3)
        with torch.no_grad():
            mse = float(((model(task.x_test) - task.y_test) ** 2).mean())
        print(f"load_model: test MSE from the returned module {mse:.4f}")
        assert abs(mse - best["test_loss"]) < 1e-5
        # batch prediction on a plain table of new inputs (here: the task's test inputs)
        rows = pa.table({"x": task.x_test[:, 0].numpy(), "y": task.y_test[:, 0].numpy()})
        pq.write_table(rows, work / "new_rows.parquet")
        raymeta.predict(
            tuned, work / "new_rows.parquet", work / "pred.parquet", feature_columns=["x"]
        )
        pred = pq.read_table(work / "pred.parquet")
        err = pred.column("prediction").to_numpy() - pred.column("y").to_numpy()
        print(f"predict: {pred.num_rows} rows, MSE {float((err**2).mean()):.4f}")


if __name__ == "__main__":
    main()
