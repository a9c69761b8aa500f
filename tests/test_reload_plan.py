"""Comparing the running configuration with the file read again."""

from __future__ import annotations

from typing import Any

from syncd import config as config_module
from syncd.reload import plan_reload


def _config(daemon: dict[str, Any] | None = None, **providers: str) -> Any:
    """Build a configuration of Stripe providers, each with its webhook secret."""
    tables = {
        name: {
            "connector": "stripe",
            "api_token": "sk_test_1",
            "webhook_secret": secret,
        }
        for name, secret in providers.items()
    }
    data: dict[str, Any] = {"daemon": daemon or {}, "providers": tables}
    return config_module.parse(data)


def test_same_file_empty_plan():
    """The same file read twice gives an empty plan."""
    plan = plan_reload(_config(a="whsec_1"), _config(a="whsec_1"))
    assert not plan.providers
    assert not plan.sinks
    assert plan.restart_keys == []
    assert plan.summary() == "no provider or sink changed"


def test_providers_sorted_by_change():
    """Names are sorted into added, removed and changed."""
    running = _config(a="whsec_1", b="whsec_1", c="whsec_1")
    loaded = _config(b="whsec_1", c="whsec_2", d="whsec_1")
    plan = plan_reload(running, loaded)
    assert plan.providers.added == ["d"]
    assert plan.providers.removed == ["a"]
    assert plan.providers.changed == ["c"]
    assert plan.summary() == "providers added: d; removed: a; changed: c"


def test_daemon_keys_need_restart():
    """Changed [daemon] keys are listed by name, unchanged ones are not."""
    running = _config({"listen": "127.0.0.1:8787", "max_body": "1MB"}, a="whsec_1")
    loaded = _config({"listen": "127.0.0.1:9000", "max_body": "1MB"}, a="whsec_1")
    assert plan_reload(running, loaded).restart_keys == ["listen"]


def test_sink_url_change():
    """A sink whose URL changes counts as changed."""
    running = config_module.parse(
        {"sinks": {"app": {"kind": "http", "url": "http://127.0.0.1:1/a"}}}
    )
    loaded = config_module.parse(
        {"sinks": {"app": {"kind": "http", "url": "http://127.0.0.1:1/b"}}}
    )
    plan = plan_reload(running, loaded)
    assert plan.sinks.changed == ["app"]
    assert plan.summary() == "sinks changed: app"
