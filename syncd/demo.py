"""``syncd demo``: a lossy simulated provider, the real daemon, and a reconcile.

Everything runs in this process on loopback with a temporary SQLite file, so
the demo needs no configuration and no credentials.
"""

from __future__ import annotations

import logging
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import func, select

from syncd import config as config_module
from syncd.daemon import Daemon
from syncd.models import Event
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime
from syncd.simulator import SimulatedStripe
from syncd.store import Store

PROVIDER = "payments"


def run_demo(
    *,
    count: int = 300,
    drop_rate: float = 0.25,
    repeat_rate: float = 0.1,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> bool:
    """Run the demo and print its report; return True when nothing was lost."""
    logging.getLogger("syncd").setLevel(logging.ERROR)
    logging.getLogger("uvicorn").setLevel(logging.ERROR)
    api_key, webhook_secret = f"sk_test_{secrets.token_hex(8)}", secrets.token_hex(16)
    simulator = SimulatedStripe(
        api_key=api_key, webhook_secret=webhook_secret, seed=seed
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="syncd-demo-") as directory:
        base_url = simulator.serve()
        try:
            sock = _loopback_socket()
            runtime = _runtime(
                Path(directory),
                base_url,
                api_key,
                webhook_secret,
                sock.getsockname()[1],
            )
            return _exercise(
                simulator, runtime, sock, count, drop_rate, repeat_rate, echo, started
            )
        finally:
            simulator.stop()


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _runtime(
    directory: Path, base_url: str, api_key: str, webhook_secret: str, port: int
) -> Runtime:
    config = config_module.parse(
        {
            "daemon": {
                "database": f"sqlite:///{directory / 'syncd.db'}",
                "listen": f"127.0.0.1:{port}",
            },
            "providers": {
                PROVIDER: {
                    "connector": "stripe",
                    "api_base_url": base_url,
                    "api_token": api_key,
                    "webhook_secret": webhook_secret,
                    "reconcile_interval": "1h",
                    # The simulated history starts before the demo does.
                    "start_from": "1d",
                }
            },
        }
    )
    return Runtime.open(config)


def _exercise(
    simulator: SimulatedStripe,
    runtime: Runtime,
    sock: socket.socket,
    count: int,
    drop_rate: float,
    repeat_rate: float,
    echo: Callable[[str], None],
    started: float,
) -> bool:
    daemon = Daemon(runtime, sock=sock)
    thread = daemon.start_in_thread()
    try:
        port = sock.getsockname()[1]
        echo(
            f"simulated provider emits {count} events; webhooks go to "
            f"http://127.0.0.1:{port}/webhooks/{PROVIDER}"
        )
        groups = min(count // 3, max(1, count // 50))
        emitted = simulator.emit_many(count, same_second_groups=groups)
        stats = simulator.deliver(
            f"http://127.0.0.1:{port}/webhooks/{PROVIDER}",
            emitted,
            drop_rate=drop_rate,
            repeat_rate=repeat_rate,
            reorder=True,
        )
        with httpx.Client() as client:
            runner = ProviderRunner(runtime.store, runtime.connectors[PROVIDER], client)
            report = runner.reconcile(trigger="command")
    finally:
        daemon.request_stop()
        thread.join(timeout=30)

    truth = set(simulator.truth())
    logged, twice = _logged_keys(runtime)
    missing, unexpected = truth - logged, logged - truth
    lines = [
        f"events emitted:              {len(truth)}",
        f"webhooks sent:               {stats.sent} ({stats.repeated} events sent "
        "more than once)",
        f"webhooks answered 2xx:       {stats.delivered}",
        f"webhooks answered otherwise: {stats.failed}",
        f"webhooks dropped:            {stats.dropped}",
        f"reconcile listed:            {report.listed} in {report.requests} requests",
        f"recovered by reconcile:      {report.new}",
        f"already in the log:          {report.already}",
        f"log entries:                 {len(logged)}",
        f"missing:                     {len(missing)}",
        f"duplicated:                  {twice}",
        f"unexpected:                  {len(unexpected)}",
        f"took {time.monotonic() - started:.1f}s",
    ]
    for line in lines:
        echo(line)
    ok = report.ok and not missing and not unexpected and twice == 0
    # The daemon must accept every webhook the simulator signs correctly.
    ok = ok and stats.failed == 0
    echo(
        "result: OK, nothing lost and nothing duplicated"
        if ok
        else f"result: FAILED {report.error or ''}"
    )
    return ok


def _logged_keys(runtime: Runtime) -> tuple[set[str], int]:
    """Return the logged keys and how many keys appear more than once."""
    store = Store(runtime.config.daemon.database)
    with store.session() as session:
        keys = set(
            session.execute(
                select(Event.key).where(Event.provider == PROVIDER)
            ).scalars()
        )
        repeated = session.execute(
            select(func.count()).select_from(
                select(Event.key)
                .where(Event.provider == PROVIDER)
                .group_by(Event.key)
                .having(func.count() > 1)
                .subquery()
            )
        ).scalar_one()
    store.dispose()
    return keys, repeated
