"""``raymeta data``: check Parquet task data against the schema, or write a demo task set.

``validate PATH`` streams a task set (a file or a directory of ``*.parquet``), checking every
column, and prints its tasks per meta-split, feature width and kind; ``--one-task`` checks a
single-task file as ``raymeta tune --task FILE`` reads it. ``make-sinusoid OUT.parquet`` writes
MAML sinusoid tasks in the schema: a starting point for your own data.
"""

from __future__ import annotations

import argparse
from typing import Any

from raymeta.cli._common import add_command
from raymeta.errors import ConfigError
from raymeta.paths import check_output_file

# make-sinusoid bounds: a demo file, generated in memory before its one atomic write
MAX_TASKS = 100_000
MAX_ROWS = 100_000
MAX_TOTAL_ROWS = 10_000_000


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data", help="validate Parquet task data or write a demo task set", description=__doc__
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
    m = add_command(
        inner,
        "make-sinusoid",
        "write sinusoid regression tasks in the task-set schema",
        _make_sinusoid,
    )
    m.add_argument("out", metavar="OUT.parquet", help="file to write (atomically)")
    m.add_argument(
        "--tasks",
        type=int,
        default=100,
        help="number of tasks, split 80/10/10 into meta-train/val/test",
    )
    m.add_argument("--train-size", type=int, default=20, help="train rows per task")
    m.add_argument("--val-size", type=int, default=20, help="val rows per task")
    m.add_argument("--test-size", type=int, default=50, help="test rows per task")
    m.add_argument("--force", action="store_true", help="overwrite OUT if it exists")

    def _help(_: argparse.Namespace) -> int:
        raise ConfigError(
            "data: choose an action, validate or make-sinusoid (see raymeta data --help)"
        )

    p.set_defaults(func=_help)


def _validate(args: argparse.Namespace) -> int:
    if not isinstance(args.path, str) or not args.path:
        raise ConfigError(f"PATH must name a Parquet file or directory, got {args.path!r}")
    if args.one_task:
        from raymeta.tasks.parquet import load_task_file

        t = load_task_file(args.path)
        sizes = f"train {len(t.x_train)}, val {len(t.x_val)}, test {len(t.x_test)}"
        print(f"{args.path}: valid task file")
        print(
            f"  task: {t.task_id}\n  kind: {t.kind} (output_dim {t.output_dim})\n  feature width: {t.input_shape[0]}"
        )
        print(f"  rows: {sizes}")
        for note in t.notes:
            print(f"  note: {note}")
        return 0
    from raymeta.tasks.base import SPLITS
    from raymeta.tasks.parquet import scan_tasks

    idx = scan_tasks(args.path, full_check=True)
    rows = {s: sum(r[s] for r in idx.rows.values()) for s in SPLITS}
    out_dim = idx.n_classes if idx.kind == "classification" else 1
    print(
        f"{args.path}: valid task set ({len(idx.files)} file{'s' if len(idx.files) != 1 else ''})"
    )
    print(f"  kind: {idx.kind} (output_dim {out_dim})\n  feature width: {idx.width}")
    print("  tasks per meta-split: " + ", ".join(f"{s} {len(idx.tasks(s))}" for s in SPLITS))
    print("  rows per within-task split: " + ", ".join(f"{s} {rows[s]}" for s in SPLITS))
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
    out = check_output_file(args.out, "OUT", force=bool(args.force))
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
    write_tasks(out, tasks, meta_split=splits)
    print(
        f"wrote {out}: {args.tasks} sinusoid tasks ("
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + ")"
    )
    return 0
