"""Logs, metrics and status of a real ``syncd run``: no secrets, every metric."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import MetaData, select

from syncd.simulator import SimulatedStripe
from syncd.store import Store
from tests.e2e.test_process import _free_port, _wait_healthy

pytestmark = pytest.mark.e2e

SECRETS = {
    "PAYMENTS_KEY": "sk_test_obs_payments_5Ue2q9",
    "PAYMENTS_WHSEC": "whsec_obs_payments_Zr81kQ",
    "LEDGER_KEY": "sk_test_obs_ledger_7Hw3xP",
    "WRONG_KEY": "sk_test_obs_wrong_Lm4tB0",
    "SINK_SECRET": "whsec_b2JzZXJ2YWJpbGl0eS1zaW5rLXNlY3JldA==",
}
FAMILIES = (
    "syncd_webhooks_received",
    "syncd_events_logged",
    "syncd_webhook_lag_seconds",
    "syncd_cursor_lag_seconds",
    "syncd_rate_limit_waits",
    "syncd_rate_limit_wait_seconds",
    "syncd_sink_backlog",
    "syncd_sink_dead_deliveries",
    "syncd_runs",
)


@dataclass
class Run:
    """Everything a run printed, served or stored."""

    stderr: str
    metrics: str
    outputs: list[str]
    responses: list[str]
    stored: str


def _config(directory: Path, database: str, port: int, sims: dict) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[daemon]
database = "{database}"
listen = "127.0.0.1:{port}"

[providers.payments]
connector = "stripe"
api_base_url = "{sims["payments"]}"
api_token = {{ env = "PAYMENTS_KEY" }}
webhook_secret = {{ env = "PAYMENTS_WHSEC" }}
reconcile_interval = "1h"

[providers.ledger]
connector = "stripe"
api_base_url = "{sims["ledger"]}"
api_token = {{ env = "LEDGER_KEY" }}
poll_interval = "1s"
start_from = "2020-01-01T00:00:00Z"

[providers.broken]
connector = "stripe"
api_base_url = "{sims["ledger"]}"
api_token = {{ env = "WRONG_KEY" }}
poll_interval = "1s"
max_attempts = 1

[sinks.archive]
kind = "jsonl"
path = "{directory / "sink.jsonl"}"

[sinks.hook]
kind = "http"
url = "http://127.0.0.1:9/unreachable"
secret = {{ env = "SINK_SECRET" }}
timeout = "1s"
""",
        encoding="utf-8",
    )
    return path


def _cli(config: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args, "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def _dump(database: str) -> str:
    """Return the text of every row of every table."""
    store = Store(database, create=False)
    metadata = MetaData()
    metadata.reflect(store.engine)
    lines = []
    with store.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                lines.append(f"{table.name}: {tuple(row)}")
    store.dispose()
    return "\n".join(lines)


def _post_webhooks(sim: SimulatedStripe, port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/webhooks/payments"
    responses = []
    for index in range(5):
        body = sim.webhook_body(sim.emit("invoice.paid"))
        signatures = {
            "valid": sim.sign(body),
            "stale": sim.sign(body, timestamp=int(time.time()) - 3600),
            "forged": "t=1,v1=" + "0" * 64,
        }
        kind = ("valid", "valid", "valid", "stale", "forged")[index]
        response = httpx.post(
            url, content=body, headers={"Stripe-Signature": signatures[kind]}
        )
        responses.append(f"{response.status_code} {response.text}")
    responses.append(httpx.post(url, content=b"{not json").text)
    return responses


def _wait_metrics(port: int, names: tuple[str, ...]) -> str:
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        if all(f"\n{name}" in text for name in names):
            return text
        time.sleep(0.2)
    return text


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    """Return the runs of this module by database kind, so each runs once."""
    return {}


@pytest.fixture
def run(runs: dict[str, Run], database_url: str, tmp_path: Path) -> Run:
    """Return the run on this database kind, starting it the first time."""
    kind = database_url.partition(":")[0]
    if kind not in runs:
        runs[kind] = _run_daemon(database_url, tmp_path)
    return runs[kind]


def _run_daemon(database_url: str, tmp_path: Path) -> Run:
    """Run the daemon with known secrets and collect what it exposed."""
    sims = {
        "payments": SimulatedStripe(
            api_key=SECRETS["PAYMENTS_KEY"],
            webhook_secret=SECRETS["PAYMENTS_WHSEC"],
            seed=21,
        ),
        "ledger": SimulatedStripe(
            api_key=SECRETS["LEDGER_KEY"], webhook_secret="whsec_unused", seed=22
        ),
    }
    urls = {name: sim.serve() for name, sim in sims.items()}
    for _ in range(3):
        sims["ledger"].emit("charge.succeeded")
    port = _free_port()
    config = _config(tmp_path, database_url, port, urls)
    env = dict(os.environ, **SECRETS)
    env.pop("JOURNAL_STREAM", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "--log-format", "json", "run"]
        + ["-c", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_healthy(port, process)
        responses = _post_webhooks(sims["payments"], port)
        metrics = _wait_metrics(port, ("syncd_cursor_lag_seconds{",))
        outputs = [
            _cli(config, env, *command)
            for command in (
                ("status",),
                ("status", "--json"),
                ("events", "list", "--json"),
                ("deliveries", "list", "--json"),
            )
        ]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        for sim in sims.values():
            sim.stop()
    return Run(stderr, metrics, outputs, responses, _dump(database_url))


def test_no_secret_anywhere(run: Run):
    """No secret appears in logs, metrics, command output, responses or rows."""
    places = {
        "stderr": run.stderr,
        "metrics": run.metrics,
        "outputs": "\n".join(run.outputs),
        "responses": "\n".join(run.responses),
        "database": run.stored,
    }
    for place, text in places.items():
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} in {place}"


def test_run_exercised_errors(run: Run):
    """The run met the failures whose messages could leak a secret."""
    assert run.responses[3].startswith("401")
    assert run.responses[4].startswith("401")
    assert "broken" in run.outputs[0]
    assert "401" in run.stored


def test_json_log_lines(run: Run):
    """Every log line is one JSON object with level, logger and message."""
    entries = [json.loads(line) for line in run.stderr.splitlines()]
    for entry in entries:
        assert {"level", "logger", "message"} <= entry.keys(), entry
    infos = [e["message"] for e in entries if e["level"] == "INFO"]
    assert any(m.startswith("syncd ") and "starting" in m for m in infos)
    assert any(m.startswith("listening for webhooks") for m in infos)
    assert "syncd stopped" in infos


def test_metric_families(run: Run):
    """/metrics has every metric family after an end-to-end run."""
    families = {
        line.split()[2]
        for line in run.metrics.splitlines()
        if line.startswith("# TYPE")
    }
    for name in FAMILIES:
        # prometheus_client types a counter's samples as NAME_total.
        assert {name, f"{name}_total"} & families, name


def test_webhook_lag_observed(run: Run):
    """The webhook lag histogram counted the three stored webhooks."""
    line = 'syncd_webhook_lag_seconds_count{provider="payments"} 3.0'
    assert line in run.metrics.splitlines()
