"""Search-space primitives for fine-tuning hyperparameters.

Every numeric parameter has a *transformed* coordinate in [0, 1] (log or linear between its
bounds); priors are distributions over that unit coordinate, so one density family serves learning
rates spanning four decades and step counts alike. Which hyperparameters exist, and the broad
default space over them, is the fine-tuning vocabulary's business
(``raymeta.finetune.hparams``): this module knows no hyperparameter by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raymeta.errors import ConfigError

Choice = str | int | float | bool


@dataclass(frozen=True)
class Float:
    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_bounds(self.name, self.low, self.high, self.log)

    def to_unit(self, value: float) -> float:
        lo, hi, v = (
            (math.log(self.low), math.log(self.high), math.log(value))
            if self.log
            else (self.low, self.high, value)
        )
        return (v - lo) / (hi - lo)

    def from_unit(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            return min(
                max(
                    math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))),
                    self.low,
                ),
                self.high,
            )
        return self.low + u * (self.high - self.low)

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def clip(self, value: float) -> float:
        return float(min(max(float(value), self.low), self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Int:
    name: str
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if int(self.low) != self.low or int(self.high) != self.high:
            raise ConfigError(
                f"search space: {self.name} bounds must be integers, got [{self.low}, {self.high}]"
            )
        _check_bounds(self.name, self.low, self.high, self.log)

    def to_unit(self, value: float) -> float:
        return Float(self.name, self.low, self.high, self.log).to_unit(value)

    def from_unit(self, u: float) -> int:
        return self.clip(Float(self.name, self.low, self.high, self.log).from_unit(u))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def clip(self, value: float) -> int:
        return int(min(max(round(float(value)), self.low), self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Categorical:
    name: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        if len(self.choices) < 1:
            raise ConfigError(f"search space: {self.name} needs at least one choice")
        if len(set(self.choices)) != len(self.choices):
            raise ConfigError(f"search space: {self.name} has duplicate choices")

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


Param = Float | Int | Categorical


def _check_bounds(name: str, low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"search space: {name} bounds must be finite, got [{low}, {high}]")
    if low >= high:
        raise ConfigError(f"search space: {name} needs low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ConfigError(
            f"search space: {name} is on a log scale so its bounds must be > 0, got [{low}, {high}]"
        )


def param_from_dict(name: str, d: Mapping[str, Any]) -> Param:
    try:
        kind = d["type"]
        if kind == "float":
            return Float(name, float(d["low"]), float(d["high"]), bool(d.get("log", False)))
        if kind == "int":
            return Int(name, int(d["low"]), int(d["high"]), bool(d.get("log", False)))
        if kind == "categorical":
            return Categorical(name, tuple(d["choices"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"search space: parameter {name!r} is malformed ({exc})") from None
    raise ConfigError(
        f"search space: parameter {name!r} has unknown type {kind!r} (float, int or categorical)"
    )


class SearchSpace:
    """An ordered mapping name -> parameter (the order fixes how samples consume randomness)."""

    def __init__(self, params: Sequence[Param]):
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ConfigError("search space: duplicate parameter names")
        if not params:
            raise ConfigError("search space: no parameters")
        self.params: dict[str, Param] = {p.name: p for p in params}

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params.values())

    def __getitem__(self, name: str) -> Param:
        return self.params[name]

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def __len__(self) -> int:
        return len(self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and list(self.params.values()) == list(
            other.params.values()
        )

    def __repr__(self) -> str:
        return f"SearchSpace({list(self.params.values())!r})"

    def names(self) -> list[str]:
        return list(self.params)

    def validate(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``config`` restricted to this space; missing or out-of-range values are errors."""
        out: dict[str, Any] = {}
        for p in self:
            if p.name not in config:
                raise ConfigError(f"config is missing hyperparameter {p.name!r}")
            if not p.contains(config[p.name]):
                raise ConfigError(
                    f"hyperparameter {p.name}={config[p.name]!r} is outside the search space {p.to_dict()}"
                )
            out[p.name] = config[p.name]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"params": [{"name": p.name, **p.to_dict()} for p in self]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        try:
            items = d["params"]
            return cls([param_from_dict(str(it["name"]), it) for it in items])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"search space is malformed ({exc})") from None
