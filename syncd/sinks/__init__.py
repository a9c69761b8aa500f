"""Delivery of logged events to the user's applications, one module per kind."""

from __future__ import annotations

from typing import Any

from syncd.sinks.base import Sink


def build_sink(settings: Any) -> Sink:
    """Create the sink of one ``[sinks.NAME]`` table."""
    from syncd.sinks.command import CommandSink
    from syncd.sinks.http import HttpSink
    from syncd.sinks.jsonl import JsonlSink

    kinds: dict[str, type[Sink]] = {
        "http": HttpSink,
        "command": CommandSink,
        "jsonl": JsonlSink,
    }
    return kinds[settings.kind](settings.name, settings)
