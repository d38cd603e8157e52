"""Results layer: the long/tidy results schema, an exactly-once Parquet sink, the reader,
aggregation (CI, normalised regret, rank, time to target) and plots.

Imports pyarrow, numpy and matplotlib only (matplotlib lazily, inside ``make_plots``); never
ray or torch. Row conventions (metric names, what ``step``, ``trial`` and ``wall_s`` mean) are
documented in ``raymeta.results.schema``.
"""

from raymeta.results.plots import make_plots
from raymeta.results.reader import list_sweeps, read_results
from raymeta.results.schema import SCHEMA, SCHEMA_VERSION, make_row
from raymeta.results.sink import ResultSink
from raymeta.results.summary import summarise

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ResultSink",
    "list_sweeps",
    "make_plots",
    "make_row",
    "read_results",
    "summarise",
]
