"""syncd: one deduplicated event log from provider webhooks, polling and reconcile."""

__version__ = "0.1.0"
