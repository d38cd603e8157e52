"""``raymeta data``: check Parquet task data, convert a plain table, or write a demo task set.

``validate PATH`` streams a task set (a file or a directory of ``*.parquet``), checking every
column, and prints its kind, feature width and shape, tasks per meta-split and the held-out
(meta-test) task ids; ``--one-task`` checks a single-task file as ``raymeta tune --task FILE``
reads it. ``convert`` turns a table with named numeric feature columns and a target column into
the task schema. ``make-sinusoid --out OUT.parquet`` writes MAML sinusoid tasks in the schema: a
starting point for your own data.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from raymeta.cli._common import add_command, column_names, defer_required, float_arg, path_arg
from raymeta.errors import ConfigError
from raymeta.options import add_renamed
from raymeta.paths import (
    check_apart,
    check_output_target,
    check_outside_artifacts,
    output_arg,
    uri_scheme,
    writing,
)

CONVERT_DOC = """\
Convert a table with named numeric feature columns and a target column into the task schema
(one row per example; see raymeta/tasks/parquet.py), e.g.

  raymeta data convert --input sales.parquet --out tasks.parquet \\
      --feature-columns price,week,promo --target-column units --task-column store

Feature columns must be integer, float or bool (a string column is refused, by name). Without
--task-column the table is one task (for raymeta tune --task FILE); without --split-column each
task's rows are split train/val/test by a permutation seeded by the task id. --shape declares
the features' shape (e.g. 1,8,8 for 8x8 images, so conv4 can train on them); it is stored in the
file's schema metadata. Written to a temporary file and renamed: a failure leaves nothing."""
MAX_LISTED = 200  # held-out task ids printed by validate


# make-sinusoid bounds: a demo file, generated in memory before its one atomic write
MAX_TASKS = 100_000
MAX_ROWS = 100_000
MAX_TOTAL_ROWS = 10_000_000


def _family_help() -> str:
    from raymeta.tasks.parquet import OPTIONS_DOC

    width = max(map(len, OPTIONS_DOC))
    lines = [f"  {k.ljust(width)}  {v}" for k, v in OPTIONS_DOC.items()]
    return (
        "Use a task set with --family parquet --family-option path=TASKS.parquet (meta-train);\n"
        "tune a held-out task with --task parquet:TASK_ID or parquet:INDEX. The parquet\n"
        "family's options (--family-option KEY=VALUE; any other key is refused):\n"
        + "\n".join(lines)
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="validate Parquet task data, convert a table, or write a demo task set",
        description=__doc__,
        epilog=_family_help,  # built on --help only: it imports the Parquet module
    )
    inner = p.add_subparsers(dest="data_action", metavar="ACTION")
    v = add_command(
        inner,
        "validate",
        "check a Parquet task set (or one task file) against the schema",
        _validate,
    )
    v.add_argument("path", metavar="PATH", help="a Parquet file or a directory of them")
    v.add_argument(
        "--one-task",
        action="store_true",
        help="PATH holds ONE task, as 'raymeta tune --task' reads it",
    )
    c = add_command(
        inner,
        "convert",
        "convert a table with named numeric feature columns and a target column to task data",
        _convert,
        CONVERT_DOC,
    )
    c.add_argument(
        "--input",
        required=True,
        type=path_arg,
        metavar="T.parquet",
        help="the table (a Parquet file or directory)",
    )
    c.add_argument(
        "--out",
        required=True,
        type=output_arg("--out", remote=True),
        metavar="TASKS.parquet",
        help="task set to write (atomically)",
    )
    c.add_argument(
        "--feature-columns",
        required=True,
        type=column_names,
        metavar="A,B,C",
        help="numeric feature columns, in order",
    )
    c.add_argument("--target-column", required=True, metavar="Y", help="the label column")
    c.add_argument(
        "--task-column",
        metavar="T",
        help="the task of each row (default: the whole table is one task)",
    )
    c.add_argument(
        "--split-column",
        metavar="S",
        help="train/val/test within each task (default: split each task's rows by --val-fraction / --test-fraction)",
    )
    c.add_argument(
        "--meta-split-column",
        metavar="M",
        help="train/val/test per task (default: a stable hash of the task id, 80/10/10)",
    )
    c.add_argument(
        "--shape",
        metavar="C,H,W",
        help="feature shape, e.g. 1,8,8 (its product must be the number of feature columns)",
    )
    c.add_argument(
        "--kind",
        choices=("auto", "regression", "classification"),
        default="auto",
        help="auto: integer/bool targets are class ids, floats regression; string labels need classification",
    )
    c.add_argument(
        "--val-fraction",
        type=float_arg(0, 1, low_open=True),
        default=0.2,
        help="share of each task's rows for val without --split-column",
    )
    c.add_argument(
        "--test-fraction",
        type=float_arg(0, 1, low_open=True),
        default=0.2,
        help="share of each task's rows for test without --split-column",
    )
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    defer_required(c)  # --input, --out, --feature-columns, --target-column may come from --config
    m = add_command(
        inner,
        "make-sinusoid",
        "write sinusoid regression tasks in the task-set schema",
        _make_sinusoid,
    )
    m.add_argument(
        "--out",
        type=output_arg("--out", remote=True),
        required=True,
        metavar="OUT.parquet",
        help="file to write (atomically): a path, file:// or object-store URI (required)",
    )
    add_renamed(m, "OUT", "--out", type=output_arg("OUT", remote=True))
    m.add_argument(
        "--tasks",
        type=int,
        default=100,
        help="number of tasks, split 80/10/10 into meta-train/val/test",
    )
    m.add_argument("--train-size", type=int, default=20, help="train rows per task")
    m.add_argument("--val-size", type=int, default=20, help="val rows per task")
    m.add_argument("--test-size", type=int, default=50, help="test rows per task")
    m.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_renamed(m, "--force", "--overwrite", action="store_true")
    defer_required(m)  # --out (or the old positional OUT) may come from --config

    def _help(_: argparse.Namespace) -> int:
        raise ConfigError(
            "data: choose an action, validate, convert or make-sinusoid (see raymeta data --help)"
        )

    p.set_defaults(func=_help)


def _validate(args: argparse.Namespace) -> int:
    if not isinstance(args.path, str) or not args.path:
        raise ConfigError(f"PATH must name a Parquet file or directory, got {args.path!r}")
    if args.one_task:
        from raymeta.tasks.parquet import load_task_file, show_shape

        t = load_task_file(args.path)
        sizes = f"train {len(t.x_train)}, val {len(t.x_val)}, test {len(t.x_test)}"
        print(f"{args.path}: valid task file")
        width = math.prod(t.input_shape)
        print(
            f"  task: {t.task_id}\n  kind: {t.kind} (output_dim {t.output_dim})\n  feature width: {width}\n  feature shape: {show_shape(t.input_shape)}"
        )
        print(f"  rows: {sizes}")
        for note in t.notes:
            print(f"  note: {note}")
        return 0
    from raymeta.tasks.base import SPLITS
    from raymeta.tasks.parquet import scan_tasks, show_shape

    idx = scan_tasks(args.path, full_check=True)
    rows = {s: sum(r[s] for r in idx.rows.values()) for s in SPLITS}
    out_dim = idx.n_classes if idx.kind == "classification" else 1
    print(
        f"{args.path}: valid task set ({len(idx.files)} file{'s' if len(idx.files) != 1 else ''})"
    )
    shape = idx.shape or (idx.width,)
    declared = "declared" if idx.shape else "flat; declare one with --family-option shape=..."
    print(f"  kind: {idx.kind} (output_dim {out_dim})\n  feature width: {idx.width}")
    print(f"  feature shape: {show_shape(shape)} ({declared})")
    print("  tasks per meta-split: " + ", ".join(f"{s} {len(idx.tasks(s))}" for s in SPLITS))
    print("  rows per within-task split: " + ", ".join(f"{s} {rows[s]}" for s in SPLITS))
    held = idx.tasks("test")
    shown = ", ".join(held[:MAX_LISTED])
    more = f", ... ({len(held) - MAX_LISTED} more)" if len(held) > MAX_LISTED else ""
    print(
        f"  held-out task ids, in index order (tune one with --task parquet:TASK_ID or parquet:INDEX): {shown or 'none'}{more}"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    if isinstance(args.out, str) and uri_scheme(args.out) in (None, "file"):
        # first: 'exists (pass --overwrite ...)' must not invite replacing such a file
        check_outside_artifacts(args.out, "--out")
    if isinstance(args.out, str) and Path(args.out).is_file() and not args.overwrite:
        raise ConfigError(f"{args.out} exists (pass --overwrite to replace it)")
    out = check_output_target(args.out, "--out", force=bool(args.overwrite))
    if isinstance(out, Path):
        check_apart(out, args.input)
    if args.val_fraction + args.test_fraction >= 1:
        raise ConfigError("--val-fraction + --test-fraction must be below 1 (train needs rows)")
    from raymeta.tasks.parquet import convert_table, parse_shape, show_shape

    shape = None if args.shape is None else parse_shape(args.shape, "--shape", ConfigError)
    for flag in ("target_column", "task_column", "split_column", "meta_split_column"):
        v = getattr(args, flag)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"--{flag.replace('_', '-')} must name a column, got {v!r}")
    with writing(out) as local:
        res = convert_table(
            args.input,
            local,
            feature_columns=args.feature_columns,
            target_column=args.target_column,
            task_column=args.task_column,
            split_column=args.split_column,
            meta_split_column=args.meta_split_column,
            shape=shape,
            kind=args.kind,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
        )
    shown = show_shape(res.shape or (res.width,))
    print(
        f"wrote {out}: {res.rows} rows, {res.tasks} task{'s' if res.tasks != 1 else ''}, {res.kind}, feature shape {shown}"
    )
    if res.classes is not None:
        print("  classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(res.classes[:50])))
    return 0


def _make_sinusoid(args: argparse.Namespace) -> int:
    for key, hi in (
        ("tasks", MAX_TASKS),
        ("train_size", MAX_ROWS),
        ("val_size", MAX_ROWS),
        ("test_size", MAX_ROWS),
    ):
        v = getattr(args, key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ConfigError(f"--{key.replace('_', '-')} must be an integer in 1..{hi}, got {v!r}")
    if args.tasks < 3:
        raise ConfigError(f"--tasks must be >= 3 (one per meta-split), got {args.tasks}")
    total = args.tasks * (args.train_size + args.val_size + args.test_size)
    if total > MAX_TOTAL_ROWS:
        raise ConfigError(
            f"--tasks x (train + val + test rows) is {total} rows, at most {MAX_TOTAL_ROWS} in one file"
        )
    if isinstance(args.out, str) and uri_scheme(args.out) in (None, "file"):
        check_outside_artifacts(args.out, "--out")
    out = check_output_target(args.out, "--out", force=bool(args.overwrite))
    from raymeta.tasks.parquet import write_tasks
    from raymeta.tasks.sinusoid import Sinusoid

    fam = Sinusoid(task_shots=args.train_size, val_size=args.val_size, test_size=args.test_size)
    n_val = n_test = max(1, args.tasks // 10)
    counts = {"train": args.tasks - n_val - n_test, "val": n_val, "test": n_test}
    tasks, splits = [], []
    for split, n in counts.items():
        for i in range(n):
            tasks.append(fam.task(split, i))  # type: ignore[arg-type]
            splits.append(split)
    with writing(out) as local:
        write_tasks(local, tasks, meta_split=splits)
    print(
        f"wrote {out}: {args.tasks} sinusoid tasks ("
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + ")"
    )
    return 0
