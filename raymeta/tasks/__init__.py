"""Task families and episodic sampling (no Ray here)."""

from raymeta.tasks._base import SPLITS, FamilySpec, Split, Task, TaskBatch, TaskFamily
from raymeta.tasks.registry import FAMILIES, make_family

__all__ = [
    "FAMILIES",
    "SPLITS",
    "FamilySpec",
    "Split",
    "Task",
    "TaskBatch",
    "TaskFamily",
    "make_family",
]
