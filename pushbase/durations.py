"""Durations as users write them: seconds as a number, or "30s", "5m", "2h", "1d"."""
from __future__ import annotations

import re

from .errors import Invalid

__all__ = ["parse_duration", "format_duration"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Return seconds. Refuses negatives, booleans and unknown units with an Invalid naming the field."""
    if isinstance(value, bool) or value is None:
        raise Invalid(f"{field}: expected seconds or a duration such as '30s', '5m', '2h', '1d'", details={"field": field, "value": value})
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise Invalid(f"{field}: must be a finite number of seconds >= 0", details={"field": field, "value": value})
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise Invalid(f"{field}: cannot read {value!r} as a duration; use seconds or '30s', '5m', '2h', '1d'", details={"field": field, "value": value})


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
