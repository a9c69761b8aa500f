"""Parsing of the duration, size and time values used in configuration and options."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.I)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: str | int | float) -> timedelta:
    """Parse ``30s``, ``15m``, ``2h``, ``7d`` (or a number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"invalid duration {value!r}: write e.g. '30s', '15m', '2h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: write a number and a unit "
                "(ms, s, m, h or d), e.g. '30s', '15m', '2h', '7d'"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: it must be a finite number")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: it must not be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(
            f"invalid duration {value!r}: it exceeds the maximum of 999999999 days"
        ) from None


def parse_size(value: str | int) -> int:
    """Parse ``25MB``, ``512KiB`` or a number of bytes into bytes."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"invalid size {value!r}: write e.g. '25MB'")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(
                f"invalid size {value!r}: write a number and a unit "
                "(B, KB, MB, GB, KiB, MiB, GiB), e.g. '25MB'"
            )
        unit = (match.group(2) or "b").lower()
        number = float(match.group(1)) * _SIZE_UNITS[unit]
        if not math.isfinite(number):
            raise ValueError(f"invalid size {value!r}: the number is too large")
        size = int(number)
    if size <= 0:
        raise ValueError(f"invalid size {value!r}: it must be greater than zero")
    return size


# The forms that parse_time accepts, as its errors describe them.
TIME_FORMS = (
    "ISO 8601 with an offset, e.g. '2024-05-01T10:00:00Z', or a duration such as '6h'"
)


def parse_time(
    value: str | datetime, now: datetime | None = None, *, forms: str = TIME_FORMS
) -> datetime:
    """Parse an ISO 8601 time with an offset, or a duration meaning that long ago.

    The result is an aware UTC datetime. ``Z`` and ``+00:00`` are the same
    instant; a time without an offset is rejected rather than guessed.
    ``forms`` is the list of valid forms that an error names. A caller that
    also accepts other values, such as "now", passes its own list.
    """
    if isinstance(value, datetime):
        parsed = value
    elif not isinstance(value, str):
        raise ValueError(f"invalid time {value!r}: write {forms}")
    else:
        text = value.strip()
        if _DURATION.match(text):
            base = now or datetime.now(UTC)
            try:
                return base - parse_duration(text)
            except OverflowError:
                raise ValueError(
                    f"invalid time {value!r}: the duration reaches back before "
                    "the year 1"
                ) from None
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"invalid time {value!r}: write {forms}") from None
    if parsed.tzinfo is None:
        raise ValueError(
            f"invalid time {value!r}: it has no UTC offset; add 'Z' or e.g. '+02:00'"
        )
    return parsed.astimezone(UTC)


def format_duration(delta: timedelta) -> str:
    """Format a duration the way configuration writes it, e.g. ``15m``."""
    seconds = delta.total_seconds()
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def to_utc_iso(moment: datetime) -> str:
    """Format an aware datetime as UTC ISO 8601 with ``Z``, keeping microseconds."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def format_age(seconds: float) -> str:
    """Format a span of seconds briefly: ``45s``, ``12m``, ``3h 5m``, ``2d 4h``."""
    if seconds < 0:
        return f"-{format_age(-seconds)}"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3_600:
        return f"{whole // 60}m"
    if whole < 86_400:
        return f"{whole // 3_600}h {whole % 3_600 // 60}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3_600}h"
