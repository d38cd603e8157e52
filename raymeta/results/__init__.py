"""Results layer: the long/tidy results schema, an exactly-once Parquet sink, the reader,
aggregation (CI, normalised regret, rank, time to target), plots and the report over every
dataset found under the paths given (``find_datasets``).

Imports pyarrow, numpy and matplotlib only (matplotlib lazily, inside ``make_plots``); never
ray or torch. Row conventions (metric names, what ``step``, ``trial`` and ``wall_s`` mean) are
documented in ``raymeta.results.schema``. Names load on first use, so the CLI can read
``reporting.FORMATS`` for its ``--help`` without importing pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raymeta.lazy import lazy_attributes

if TYPE_CHECKING:
    from raymeta.results.discover import find_datasets
    from raymeta.results.plots import make_plots
    from raymeta.results.reader import list_sweeps, read_results
    from raymeta.results.reporting import Report, report
    from raymeta.results.schema import SCHEMA, SCHEMA_VERSION, make_row
    from raymeta.results.sink import ResultSink
    from raymeta.results.summary import summarise

_WHERE = {
    "find_datasets": ".discover",
    "make_plots": ".plots",
    "list_sweeps": ".reader",
    "read_results": ".reader",
    "Report": ".reporting",
    "report": ".reporting",
    "SCHEMA": ".schema",
    "SCHEMA_VERSION": ".schema",
    "make_row": ".schema",
    "ResultSink": ".sink",
    "summarise": ".summary",
}

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "Report",
    "ResultSink",
    "find_datasets",
    "list_sweeps",
    "make_plots",
    "make_row",
    "read_results",
    "report",
    "summarise",
]


__getattr__ = lazy_attributes(__name__, _WHERE)
