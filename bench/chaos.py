"""Crash-safety harness: SIGKILL ``syncd run`` at random moments under load.

Each trial lets the daemon run under load for a random time, kills it with
SIGKILL, restarts it, pauses the load, waits for the daemon to catch up and
then checks the log:

- every webhook answered 2xx is in the log (lost otherwise);
- no (provider, key) and no provider event id is in the log twice;
- every event of the polled provider is in the log, so no cursor skipped one;
- every logged event has a delivered row for the jsonl sink, and its line is
  in the sink's file.

Load: threads POST Stripe webhooks signed by a SimulatedStripe, and a second
SimulatedStripe, polled every second with webhooks off, emits events. All
servers listen on 127.0.0.1. Run ``python -m bench.chaos --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select, text
from sqlmodel import SQLModel

from syncd.models import Delivery, Event
from syncd.simulator import SimulatedStripe
from syncd.store import Store, redact_url

WEBHOOK_KEY = "sk_test_chaos_webhooks"
WEBHOOK_SECRET = "whsec_chaos_secret"
POLLED_KEY = "sk_test_chaos_polled"
SINK = "archive"
EVENT_TYPES = ("invoice.paid", "charge.succeeded", "customer.updated")


@dataclass
class TrialResult:
    """The findings after one kill and restart."""

    trial: int
    ran_seconds: float
    acknowledged: int
    polled: int
    logged: int
    lost_webhooks: list[str] = field(default_factory=list)
    lost_polled: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)
    stranded: list[int] = field(default_factory=list)
    missing_lines: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.lost_webhooks) + len(self.lost_polled)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.undelivered or self.missing_lines
        )


@dataclass
class ChaosReport:
    """All trials of one run."""

    database: str
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(t.lost for t in self.trials)

    @property
    def duplicated(self) -> int:
        return sum(len(t.duplicated) for t in self.trials)

    @property
    def undelivered(self) -> int:
        return sum(len(t.undelivered) + len(t.missing_lines) for t in self.trials)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.trials)


class _Load:
    """Threads that send signed webhooks and emit polled events until paused."""

    def __init__(
        self, webhooks: SimulatedStripe, polled: SimulatedStripe, url: str
    ) -> None:
        self.webhooks = webhooks
        self.polled = polled
        self.url = url
        self.acknowledged: set[str] = set()
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stop = threading.Event()
        self._idle = [threading.Event() for _ in range(3)]
        self._threads = [
            threading.Thread(target=self._send, args=(self._idle[0], 1), daemon=True),
            threading.Thread(target=self._send, args=(self._idle[1], 2), daemon=True),
            threading.Thread(target=self._emit, args=(self._idle[2],), daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def resume(self) -> None:
        for idle in self._idle:
            idle.clear()
        self._running.set()

    def pause(self) -> None:
        """Stop sending and wait until no request is in flight."""
        self._running.clear()
        for idle in self._idle:
            idle.wait(30)

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(30)

    def _wait_running(self, idle: threading.Event) -> bool:
        if not self._running.is_set():
            idle.set()
            self._running.wait()
        return not self._stop.is_set()

    def _send(self, idle: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while self._wait_running(idle):
                event = self.webhooks.emit(rng.choice(EVENT_TYPES))
                body = self.webhooks.webhook_body(event)
                headers = {"Stripe-Signature": self.webhooks.sign(body)}
                try:
                    response = client.post(self.url, content=body, headers=headers)
                except httpx.TransportError:
                    time.sleep(0.1)  # the daemon is down; reconcile finds the event
                    continue
                if response.is_success:
                    with self._lock:
                        self.acknowledged.add(event["id"])
                time.sleep(0.01)

    def _emit(self, idle: threading.Event) -> None:
        rng = random.Random(3)
        while self._wait_running(idle):
            self.polled.emit(rng.choice(EVENT_TYPES))
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(
    directory: Path, database: str, port: int, webhooks_url: str, polled_url: str
) -> Path:
    start = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = directory / "config.toml"
    path.write_text(
        f"""
[daemon]
database = "{database}"
listen = "127.0.0.1:{port}"

[providers.payments]
connector = "stripe"
api_base_url = "{webhooks_url}"
api_token = {{ env = "CHAOS_WEBHOOKS_KEY" }}
webhook_secret = {{ env = "CHAOS_WEBHOOK_SECRET" }}
reconcile_interval = "1h"

[providers.ledger]
connector = "stripe"
api_base_url = "{polled_url}"
api_token = {{ env = "CHAOS_POLLED_KEY" }}
poll_interval = "1s"
start_from = "{start}"

[sinks.{SINK}]
kind = "jsonl"
path = "{directory / "sink.jsonl"}"
""",
        encoding="utf-8",
    )
    return path


class _Daemon:
    """``syncd run`` as a subprocess, with its standard error in a file."""

    def __init__(self, config: Path, port: int, directory: Path) -> None:
        self.config = config
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = dict(
            os.environ,
            CHAOS_WEBHOOKS_KEY=WEBHOOK_KEY,
            CHAOS_WEBHOOK_SECRET=WEBHOOK_SECRET,
            CHAOS_POLLED_KEY=POLLED_KEY,
        )
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(name, None)
        log = self.directory / f"syncd-{self.starts:03d}.log"
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "syncd.cli", "run", "-c", str(self.config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_healthy(log)

    def _wait_healthy(self, log: Path) -> None:
        deadline = time.monotonic() + 30
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"syncd run exited; see {log}")
            try:
                if httpx.get(url, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"syncd run was not healthy within 30 s; see {log}")

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(30)


class _Checker:
    """Reads the log, the deliveries and the sink file while the daemon runs."""

    def __init__(self, database: str, sink_path: Path) -> None:
        self.store = Store(database, create=False)
        self.sink_path = sink_path

    def keys(self, provider: str) -> list[str]:
        with self.store.session() as session:
            query = select(Event.key).where(Event.provider == provider)
            return list(session.execute(query).scalars())

    def duplicated(self) -> list[str]:
        with self.store.session() as session:
            query = (
                select(Event.provider, Event.key)
                .group_by(Event.provider, Event.key)
                .having(func.count() > 1)
            )
            return [f"{p}:{k}" for p, k in session.execute(query)]

    def delivery_gaps(self, live_pid: int) -> tuple[list[int], list[int]]:
        """Return offsets without a delivered row, and those held by a dead lease.

        A held row is pending under an unexpired lease of a process other
        than ``live_pid`` (a killed daemon): it is delivered once the lease
        expires, so it is late rather than lost.
        """
        now = datetime.now(UTC)
        with self.store.session() as session:
            offsets = set(session.execute(select(Event.offset)).scalars())
            rows = session.execute(
                select(
                    Delivery.event_offset,
                    Delivery.status,
                    Delivery.lease_owner,
                    Delivery.lease_until,
                ).where(Delivery.sink == SINK)
            ).all()
        delivered = {row.event_offset for row in rows if row.status == "delivered"}
        held = {
            row.event_offset
            for row in rows
            if row.status == "pending"
            and row.lease_until is not None
            and row.lease_until > now
            and f":{live_pid}:" not in (row.lease_owner or "")
        }
        missing = offsets - delivered
        return sorted(missing - held), sorted(missing & held)

    def delivered_count(self) -> int:
        with self.store.session() as session:
            query = select(func.count()).where(
                Delivery.sink == SINK, Delivery.status == "delivered"
            )
            return session.execute(query).scalar_one()

    def sink_keys(self) -> set[str]:
        if not self.sink_path.exists():
            return set()
        keys = set()
        for line in self.sink_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL; it is written again
            keys.add(f"{entry['provider']}:{entry['key']}")
        return keys

    def delivered_keys(self) -> set[str]:
        with self.store.session() as session:
            query = (
                select(Event.provider, Event.key)
                .join(Delivery, Delivery.event_offset == Event.offset)
                .where(Delivery.sink == SINK, Delivery.status == "delivered")
            )
            return {f"{p}:{k}" for p, k in session.execute(query)}

    def close(self) -> None:
        self.store.dispose()


def _wait_for(
    condition: Callable[[], bool], progress: Callable[[], int], stall: float
) -> bool:
    """Wait until ``condition`` holds, or until ``progress`` stalls for ``stall`` s."""
    last, deadline = progress(), time.monotonic() + stall
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
        current = progress()
        if current != last:
            last, deadline = current, time.monotonic() + stall
    return True


def _check_empty(database: str) -> None:
    store = Store(database)
    try:
        with store.session() as session:
            count = session.execute(select(func.count()).select_from(Event)).scalar()
    finally:
        store.dispose()
    if count:
        raise SystemExit(
            f"error: the database already contains {count} events; use an empty "
            "database, or pass --reset to drop syncd's tables first"
        )


def _reset(database: str) -> None:
    store = Store(database, create=False)
    SQLModel.metadata.drop_all(store.engine)
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    store.dispose()


def _check_trial(
    trial: TrialResult,
    checker: _Checker,
    load: _Load,
    polled: SimulatedStripe,
    *,
    live_pid: int,
    settle: float,
) -> None:
    acknowledged = set(load.acknowledged)
    expected_polled = set(polled.truth())

    def caught_up() -> bool:
        logged = set(checker.keys("ledger"))
        undelivered, _held = checker.delivery_gaps(live_pid)
        return expected_polled <= logged and not undelivered

    def progress() -> int:
        return len(checker.keys("ledger")) + checker.delivered_count()

    _wait_for(caught_up, progress, settle)
    payments = checker.keys("payments")
    ledger = checker.keys("ledger")
    trial.acknowledged = len(acknowledged)
    trial.polled = len(expected_polled)
    trial.logged = len(payments) + len(ledger)
    trial.lost_webhooks = sorted(acknowledged - set(payments))
    trial.lost_polled = sorted(expected_polled - set(ledger))
    trial.duplicated = checker.duplicated()
    for keys in (payments, ledger):
        trial.duplicated += sorted(k for k, n in Counter(keys).items() if n > 1)
    trial.undelivered, trial.stranded = checker.delivery_gaps(live_pid)
    trial.missing_lines = sorted(checker.delivered_keys() - checker.sink_keys())


def run_chaos(
    database: str | None,
    *,
    trials: int = 20,
    seed: int = 1,
    min_run: float = 0.3,
    max_run: float = 3.0,
    settle: float = 20.0,
    reset: bool = False,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> ChaosReport:
    """Run ``trials`` kill-and-restart trials and return what each one found."""
    directory = Path(workdir or tempfile.mkdtemp(prefix="syncd-chaos-"))
    database = database or f"sqlite:///{directory / 'syncd.db'}"
    if reset:
        _reset(database)
    _check_empty(database)
    rng = random.Random(seed)
    webhooks = SimulatedStripe(
        api_key=WEBHOOK_KEY, webhook_secret=WEBHOOK_SECRET, seed=seed
    )
    polled = SimulatedStripe(
        api_key=POLLED_KEY, webhook_secret="whsec_unused", seed=seed + 1
    )
    port = _free_port()
    config = _write_config(directory, database, port, webhooks.serve(), polled.serve())
    daemon = _Daemon(config, port, directory)
    load = _Load(webhooks, polled, f"http://127.0.0.1:{port}/webhooks/payments")
    checker = _Checker(database, directory / "sink.jsonl")
    report = ChaosReport(database=redact_url(database))
    echo(f"chaos: {trials} trials on {report.database}; files in {directory}")
    try:
        daemon.start()
        load.start()
        for number in range(1, trials + 1):
            ran = rng.uniform(min_run, max_run)
            load.resume()
            time.sleep(ran)
            daemon.kill()
            daemon.start()
            load.pause()
            trial = TrialResult(number, ran, 0, 0, 0)
            _check_trial(
                trial, checker, load, polled, live_pid=daemon.pid, settle=settle
            )
            report.trials.append(trial)
            echo(_trial_line(trial))
    finally:
        load.close()
        daemon.stop()
        checker.close()
        webhooks.stop()
        polled.stop()
    return report


def _trial_line(trial: TrialResult) -> str:
    line = (
        f"trial {trial.trial:>3}: killed after {trial.ran_seconds:.2f}s; "
        f"acknowledged {trial.acknowledged}, polled {trial.polled}, "
        f"logged {trial.logged}; lost {trial.lost}, "
        f"duplicated {len(trial.duplicated)}, "
        f"undelivered {len(trial.undelivered) + len(trial.missing_lines)}, "
        f"held by a dead lease {len(trial.stranded)}"
    )
    for name in ("lost_webhooks", "lost_polled", "duplicated", "undelivered"):
        values = getattr(trial, name)
        if values:
            line += f"\n  {name}: {values[:10]}"
    if trial.missing_lines:
        line += f"\n  delivered but not in the sink file: {trial.missing_lines[:10]}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="SIGKILL syncd run under load and check that nothing is "
        "lost or duplicated.",
    )
    parser.add_argument(
        "--trials", type=int, default=20, help="Kill-and-restart trials (default 20)."
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="Empty database for the run (default: a new SQLite file).",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="Drop syncd's tables in --database before the run.",
    )
    parser.add_argument("--seed", type=int, default=1, help="Seed (default 1).")
    parser.add_argument(
        "--max-run",
        type=float,
        default=3.0,
        help="Maximum seconds under load before each kill (default 3).",
    )
    args = parser.parse_args(argv)
    # SIGTERM ends the run through the finally blocks, which stop the daemon.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    if args.trials < 1:
        parser.error(f"invalid --trials {args.trials}: must be at least 1")
    report = run_chaos(
        args.database,
        trials=args.trials,
        seed=args.seed,
        max_run=args.max_run,
        reset=args.reset,
    )
    held = sum(len(t.stranded) for t in report.trials)
    print(
        f"trials {len(report.trials)}, lost {report.lost}, "
        f"duplicated {report.duplicated}, undelivered {report.undelivered}, "
        f"deliveries held by a dead process's lease {held}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
