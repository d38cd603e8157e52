"""Results layer: the long/tidy results schema, an exactly-once Parquet sink, the reader,
aggregation (CI, normalised regret, rank, time-to-target) and plots.

Imports pyarrow, numpy and matplotlib only (matplotlib lazily, inside ``make_plots``); never
ray or torch. Row conventions are documented in ``raymeta.results.schema``.
"""

from raymeta.results.reader import list_sweeps, read_results
from raymeta.results.schema import SCHEMA, SCHEMA_VERSION, make_row
from raymeta.results.sink import ResultSink

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ResultSink", "list_sweeps", "make_row", "read_results"]
