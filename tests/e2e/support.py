"""Helpers for end-to-end runs against the simulated Stripe on loopback."""

from __future__ import annotations

from typing import Any

import httpx

from syncd import config as config_module
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime

API_KEY = "sk_test_e2e_4242"
WEBHOOK_SECRET = "whsec_e2e_secret"
T0 = 1714557600  # 2024-05-01T10:00:00Z


class FakeClock:
    """A settable Unix clock shared by the simulator and syncd."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(
    database_url: str, base_url: str, *, webhooks: bool, **provider: Any
) -> config_module.Config:
    """Build a one-provider configuration named ``payments``."""
    table: dict[str, Any] = {
        "connector": "stripe",
        "api_base_url": base_url,
        "api_token": API_KEY,
        "max_retry_wait": "1s",
        "start_from": "2024-05-01T09:00:00Z",
        **provider,
    }
    if webhooks:
        table["webhook_secret"] = WEBHOOK_SECRET
    return config_module.parse(
        {"daemon": {"database": database_url}, "providers": {"payments": table}}
    )


class Harness:
    """A runtime and provider runner with injected clock and recorded sleeps."""

    def __init__(self, config: config_module.Config, clock: FakeClock) -> None:
        self.runtime = Runtime.open(config, clock=clock)
        self.client = httpx.Client(trust_env=False)
        self.sleeps: list[float] = []
        self.runner = ProviderRunner(
            self.runtime.store,
            self.runtime.connectors["payments"],
            self.client,
            clock=clock,
            sleep=self.sleeps.append,
        )

    def close(self) -> None:
        self.client.close()
        self.runtime.close()
