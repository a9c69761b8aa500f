"""Prometheus metrics of one daemon, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)
