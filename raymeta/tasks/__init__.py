"""Task families and episodic sampling (no Ray here)."""

from raymeta.tasks.base import SPLITS, FamilySpec, Split, Task, TaskBatch, TaskFamily
from raymeta.tasks.registry import (
    FAMILIES,
    SPLIT_OPTIONS,
    check_split_options,
    make_family,
    resize_splits,
)

__all__ = [
    "FAMILIES",
    "SPLITS",
    "SPLIT_OPTIONS",
    "FamilySpec",
    "Split",
    "Task",
    "TaskBatch",
    "TaskFamily",
    "check_split_options",
    "make_family",
    "resize_splits",
]
