"""User-facing errors.

Anything a user can cause (bad flags, bad files, bad data) raises a ``RaymetaError`` subclass
with a one-line message; the CLI prints it and exits non-zero instead of showing a traceback.
"""


class RaymetaError(Exception):
    """Base class for errors caused by user input; the message is shown as-is."""


class ConfigError(RaymetaError, ValueError):
    """An invalid option, flag value or config file."""


class ContractError(ConfigError):
    """A user's model or task family breaks raymeta's plug-in contract (``raymeta.testing``).

    A ``ConfigError`` because the plug-in is part of the run's configuration: the CLI shows it
    as one line. ``rule`` names the broken rule (e.g. ``"head"``, ``"vmap"``) so a test can
    assert on it without parsing the message."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keep ``rule`` across Ray/pickle
        return (type(self), (str(self), self.rule))


class DataError(RaymetaError, ValueError):
    """Task data that is missing, malformed or too small for the request."""


class CheckpointError(RaymetaError):
    """A meta-checkpoint or priors file that is missing, truncated, tampered or incompatible."""


class ClusterError(RaymetaError):
    """A Ray cluster that is unreachable or too small for the request."""


class DeprecatedOption(FutureWarning):
    """A renamed flag, key or argument that still works; the CLI shows it as one
    ``raymeta: warning: ...`` line (a ``FutureWarning``, so Python shows it by default too)."""
