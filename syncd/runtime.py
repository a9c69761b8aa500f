"""What every command shares: the configuration, the store and the connectors."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Connector
from connectors.registry import load_connector
from syncd.config import Config, ProviderConfig
from syncd.metrics import Metrics
from syncd.outbox import RetryPolicy, SinkRoute
from syncd.store import Store


@dataclass
class Runtime:
    """The configuration with its store and one connector per provider."""

    config: Config
    store: Store
    connectors: dict[str, Connector]
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def open(cls, config: Config, clock: Callable[[], float] = time.time) -> Runtime:
        """Open the store and build the connectors of ``config``."""
        store = Store(config.daemon.database)
        store.sink_routes = [route_of(sink) for sink in config.sinks.values()]
        connectors = {
            name: build_connector(provider)
            for name, provider in config.providers.items()
        }
        return cls(config=config, store=store, connectors=connectors, clock=clock)

    def close(self) -> None:
        self.store.dispose()


def build_connector(provider: ProviderConfig) -> Connector:
    """Return the connector for one provider's validated configuration."""
    return load_connector(provider.connector)(provider)


def route_of(sink: Any) -> SinkRoute:
    """Return the routing filter of one sink's configuration."""
    return SinkRoute(sink.name, tuple(sink.providers), tuple(sink.types))


def policy_of(sink: Any) -> RetryPolicy:
    """Return the retry policy of one sink's configuration."""
    return RetryPolicy(max_attempts=sink.max_attempts, max_age=sink.max_age)
