"""raymeta: Ray-distributed, population-based meta-tuner.

The pure layers (``core``, ``tasks``, ``priors``, ``results``) never import Ray; only
``orchestration`` and ``cli`` do, so the engine can be used and tested without a cluster.
"""

from raymeta._version import __version__

__all__ = ["__version__"]
