"""``raymeta predict``: batch inference with a tune run's best model."""

from __future__ import annotations

import argparse
from typing import Any

from raymeta.cli._common import add_command, column_names, defer_required, int_arg, path_arg
from raymeta.paths import output_arg

DESCRIPTION = """\
Run the best model of a 'raymeta tune' run (--run TUNE_DIR: best_model.pt + report.json) on a
Parquet file in the task schema (only the 'features' column is needed; task_id, split, target
and any other columns are copied to the output), or on plain numeric columns with
--feature-columns. The weights' sha256 is checked against report.json and they are loaded with
torch.load(weights_only=True). Flat features are reshaped to the model's input shape.

Output columns (written atomically to --out):
  regression      prediction (or prediction_0 .. prediction_K-1 for K outputs)
  classification  prediction (class id, int64) and logits (list of one score per class)

In Python: model = raymeta.load_model(TUNE_DIR); model(x) for x shaped like the model's inputs."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub, "predict", "predict with a tune run's best model (batch, Parquet)", _run, DESCRIPTION
    )
    p.add_argument(
        "--run",
        required=True,
        type=path_arg,
        metavar="TUNE_DIR",
        help="a raymeta tune --out directory",
    )
    p.add_argument(
        "--input",
        required=True,
        type=path_arg,
        metavar="X.parquet",
        help="rows to predict (a Parquet file or directory)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=output_arg("--out"),
        metavar="PRED.parquet",
        help="where to write the predictions",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--feature-columns",
        type=column_names,
        metavar="A,B,C",
        help="read features from these numeric columns instead of 'features'",
    )
    p.add_argument(
        "--batch-rows", type=int_arg(1, 1 << 24), default=8192, help="rows per inference batch"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")
    defer_required(p)  # --run, --input, --out may come from --config


def _run(args: argparse.Namespace) -> int:
    from raymeta.errors import ConfigError
    from raymeta.inference import predict, read_run

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible to this process")
    res = predict(
        args.run,
        args.input,
        args.out,
        overwrite=bool(args.overwrite),
        feature_columns=args.feature_columns,
        batch_rows=args.batch_rows,
        device=args.device,
    )
    run = read_run(args.run)
    who = f"model {run.spec.name}" + (f" (candidate {run.candidate})" if run.candidate else "")
    added = [c for c in res.columns if c == "logits" or c.startswith("prediction")]
    print(f"wrote {res.path}: {res.rows} rows, {run.kind}, columns {', '.join(added)} from {who}")
    return 0
