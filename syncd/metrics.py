"""Prometheus metrics of one daemon, in a registry of its own."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds from the provider's event time to receipt; webhooks retried by the
# provider arrive minutes to hours late, so the buckets reach one day.
LAG_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


class Metrics:
    """The counters and histograms that ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks_received = Counter(
            "syncd_webhooks_received",
            "Webhook requests received, by provider",
            ["provider"],
            registry=self.registry,
        )
        self.webhooks_rejected = Counter(
            "syncd_webhooks_rejected",
            "Webhook requests rejected, by provider and reason",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.webhooks_duplicate = Counter(
            "syncd_webhooks_duplicate",
            "Webhook events already in the log, by provider",
            ["provider"],
            registry=self.registry,
        )
        self.events_logged = Counter(
            "syncd_events_logged",
            "Events added to the log, by provider and source",
            ["provider", "source"],
            registry=self.registry,
        )
        self.missed_recovered = Counter(
            "syncd_missed_webhooks_recovered",
            "Events that reconcile added because no webhook brought them",
            ["provider", "type"],
            registry=self.registry,
        )
        self.runs = Counter(
            "syncd_runs",
            "Poll and reconcile runs, by provider, kind and outcome",
            ["provider", "kind", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "syncd_run_duration_seconds",
            "Duration of poll and reconcile runs",
            ["provider", "kind"],
            registry=self.registry,
        )

        self.sink_attempts = Counter(
            "syncd_sink_attempts",
            "Delivery attempts, by sink and result",
            ["sink", "result"],
            registry=self.registry,
        )
        self.sink_dead = Counter(
            "syncd_sink_dead",
            "Deliveries that exhausted their attempts, by sink",
            ["sink"],
            registry=self.registry,
        )
        self.webhook_lag = Histogram(
            "syncd_webhook_lag_seconds",
            "Seconds from the provider's event time to the commit of a new "
            "webhook event",
            ["provider"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.cursor_lag = Gauge(
            "syncd_cursor_lag_seconds",
            "Seconds between now and a listing cursor's high-water mark",
            ["provider", "listing"],
            registry=self.registry,
        )
        self.rate_limit_waits = Counter(
            "syncd_rate_limit_waits",
            "Waits for a provider's rate limit before a request, by provider",
            ["provider"],
            registry=self.registry,
        )
        self.rate_limit_wait_seconds = Counter(
            "syncd_rate_limit_wait_seconds",
            "Seconds spent waiting for a provider's rate limit, by provider",
            ["provider"],
            registry=self.registry,
        )
        self.sink_backlog = Gauge(
            "syncd_sink_backlog",
            "Deliveries pending for each sink",
            ["sink"],
            registry=self.registry,
        )
        self.sink_dead_backlog = Gauge(
            "syncd_sink_dead_deliveries",
            "Deliveries in the dead state for each sink, waiting for a person",
            ["sink"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)
