"""Configuration reloads: what they change, and what only a restart applies.

The daemon compares the running configuration with the file read again on
SIGHUP. Providers and sinks are added, removed or replaced while the webhook
server keeps serving. The ``[daemon]`` table sets the socket, the store and
the server's limits, which are fixed once the server listens. A change there
is logged and applies at the next restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncd.config import Config


@dataclass(frozen=True)
class Changes:
    """The names added, removed and changed in one table of tables."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, kind: str) -> str:
        """Return e.g. ``providers added: a; changed: b``, or '' when none."""
        parts = [
            f"{verb}: {', '.join(names)}"
            for verb, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return f"{kind} " + "; ".join(parts) if parts else ""


@dataclass(frozen=True)
class ReloadPlan:
    """Everything that differs between two configurations."""

    providers: Changes
    sinks: Changes
    # ``[daemon]`` keys whose new value needs a restart, e.g. ``listen``.
    restart_keys: list[str]

    def summary(self) -> str:
        """Return one line naming what the reload applies."""
        parts = [self.providers.describe("providers"), self.sinks.describe("sinks")]
        return "; ".join(p for p in parts if p) or "no provider or sink changed"


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """Compare the running configuration with one loaded from the file again."""
    return ReloadPlan(
        providers=_compare(running.providers, loaded.providers),
        sinks=_compare(running.sinks, loaded.sinks),
        restart_keys=[
            key
            for key in type(running.daemon).model_fields
            if getattr(running.daemon, key) != getattr(loaded.daemon, key)
        ],
    )


def _compare(running: dict[str, Any], loaded: dict[str, Any]) -> Changes:
    # Pydantic models compare field by field, secrets by their values, so a
    # rotated webhook secret counts as a change.
    return Changes(
        added=sorted(loaded.keys() - running.keys()),
        removed=sorted(running.keys() - loaded.keys()),
        changed=sorted(
            name
            for name in running.keys() & loaded.keys()
            if running[name] != loaded[name]
        ),
    )
