"""The sink interface: deliver one event, report what happened.

A sink is given the event envelope as JSON bytes and its idempotency key,
and returns an :class:`Outcome`. It never raises for a failed delivery; the
outbox decides about retries from the outcome.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt.

    ``retry_after`` is the receiver's requested wait in seconds, when it gave
    one; ``error`` says why an attempt failed.
    """

    delivered: bool
    error: str | None = None
    retry_after: float | None = None

    @classmethod
    def ok(cls) -> Outcome:
        return cls(delivered=True)

    @classmethod
    def failed(cls, error: str, retry_after: float | None = None) -> Outcome:
        return cls(delivered=False, error=error, retry_after=retry_after)


class Sink(ABC):
    """Base class of the sink kinds; ``settings`` is the sink's config table."""

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings

    @abstractmethod
    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        """Deliver one envelope; return the outcome without raising for failures."""

    def close(self) -> None:  # noqa: B027 - most sinks hold nothing open
        """Release what the sink holds open (connections, files)."""
