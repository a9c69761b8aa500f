"""Stop and restart the PostgreSQL server under ``syncd run`` while it takes load.

WARNING: this script restarts a PostgreSQL server. By default it starts a
throwaway PostgreSQL 15 cluster of its own on a free loopback port and
restarts that one. With ``--database`` it restarts whatever server the
``--restart-command``, ``--stop-command`` and ``--start-command`` options
control, e.g. a local test server. Never point it at a shared production
server: every client of that server loses its connections.

Load: several threads POST signed Stripe webhooks, each sending the next one
shortly after the response to the last; a simulated Stripe that syncd polls
every second emits events; and a ``jsonl`` sink receives every logged event.
Each outage runs its commands while the load goes on. Then the load stops,
and once polls and deliveries have caught up the script checks:

- every webhook acknowledged with a 2xx is in the log, and no event is logged twice;
- no webhook sent while the server was down got a 2xx, and every response
  was 200 or 503 (or a connection-level failure);
- webhooks get 2xx again after each outage, without a restart of syncd,
  and ``/healthz`` returned 503 while the server was down, 200 after;
- every polled event is in the log and every logged event reached the sink;
- the webhook writer logged one outage line and one recovery line for each
  outage that produced 503s, each sink worker logged as many recoveries as
  outages, and the log contains no traceback.

Run ``python -m bench.store_outage --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql

from bench.chaos import (
    EVENT_TYPES,
    POLLED_KEY,
    WEBHOOK_KEY,
    WEBHOOK_SECRET,
    _Checker,
    _Daemon,
    _free_port,
    _wait_for,
    _write_config,
)
from syncd.simulator import SimulatedStripe
from syncd.store import redact_url

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
RECOVERY_TIMEOUT = 60.0  # seconds syncd may take to return 2xx after an outage

# Lines of the daemon's log counted by the checks.
WRITER_DOWN = "store unavailable, answering webhooks with 503"
WRITER_UP = "store available again"
SINK_DOWN = "store unavailable, pausing"
SINK_UP = "recovered, delivering again"
POLL_FAILED = "poll run failed"


def cluster_problem() -> str | None:
    """Return why a throwaway cluster cannot start here, or None if it can."""
    for program in ("initdb", "pg_ctl"):
        if not (POSTGRES_BIN / program).is_file():
            return f"{POSTGRES_BIN / program} is missing (install postgresql-15)"
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root, and there is no 'postgres' user to run PostgreSQL"
    if shutil.which("runuser") is None:
        return "running as root, and runuser is missing to switch to 'postgres'"
    return None


class ThrowawayCluster:
    """A PostgreSQL 15 cluster in a temporary directory, on 127.0.0.1 only.

    PostgreSQL refuses to run as root, so under root every command runs as
    the ``postgres`` user through ``runuser``. Unix sockets go to the cluster's
    own directory, and authentication is ``trust``.
    """

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)

    @staticmethod
    def _command(program: str, *args: str) -> list[str]:
        command = [str(POSTGRES_BIN / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, program: str, *args: str) -> None:
        command = self._command(program, *args)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed with exit code "
                f"{done.returncode}: {done.stderr.strip()[-2000:]}"
            )

    def create(self) -> None:
        """Run initdb and start the server."""
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        # The cluster is thrown away, and a restart of PostgreSQL alone loses
        # nothing without fsync because the data stays in the page cache.
        # Commits then no longer wait for the disk.
        settings = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.directory}'\n"
            "fsync = off\n"
        )
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(settings)
        self.start()

    def _pg_ctl(self, action: str, *args: str) -> None:
        log = str(self.directory / "server.log")
        self._run("pg_ctl", action, "-D", str(self.data), "-w", "-l", log, *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def running(self) -> bool:
        command = self._command("pg_ctl", "status", "-D", str(self.data))
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server in fast mode: open transactions are rolled back."""
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            )
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def destroy(self) -> None:
        """Stop the server if it runs, and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            # A server that already stopped makes pg_ctl fail; the files go anyway.
            with contextlib.suppress(RuntimeError):
                self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def throwaway_cluster() -> Iterator[ThrowawayCluster]:
    """Create and start a throwaway cluster; destroy it when the block ends."""
    cluster = ThrowawayCluster()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.destroy()


@contextmanager
def private_schema(url: str) -> Iterator[str]:
    """Create a schema of this run in the database; yield a URL that uses it.

    Other clients of the database, which use their own schemas, are left
    alone. Dropping the schema at the end needs the server to be running.
    """
    schema = f"syncd_outage_{os.getpid()}"
    statement = sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(statement)
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(drop.format(sql.Identifier(schema)))


@dataclass
class Outage:
    """One disruption of the server: ``begin``, a pause, then ``end``.

    ``begin`` returns once the server is down (a stop) or back (a restart).
    ``end`` is None for a restart.
    """

    name: str
    begin: Callable[[], None]
    end: Callable[[], None] | None = None
    pause: float = 0.0


def command_outage(
    name: str, begin: list[str], end: list[str] | None, pause: float
) -> Outage:
    """Return an outage that runs shell-free commands."""

    def runner(command: list[str]) -> Callable[[], None]:
        return lambda: subprocess.run(command, check=True, timeout=120)

    return Outage(name, runner(begin), runner(end) if end else None, pause)


@dataclass
class WebhookResponse:
    """The response to one webhook; ``status`` is None for a connection failure."""

    event_id: str
    sent: float
    received: float
    status: int | None


@dataclass
class OutageResult:
    """Webhook responses and health probes around one outage.

    Times are ``time.monotonic()`` readings: when ``begin`` was called, when
    it returned, when ``end`` was called, and when the outage ended.
    """

    name: str
    began: float
    down: float
    up: float
    ended: float
    recovered_after: float | None = None
    # Responses to webhooks sent from the start of the outage to the first
    # 2xx after it, and to those sent and received while the server was down.
    statuses: Counter[str] = field(default_factory=Counter)
    statuses_while_down: Counter[str] = field(default_factory=Counter)
    acknowledged_while_down: list[str] = field(default_factory=list)
    health_while_down: Counter[str] = field(default_factory=Counter)
    health_after: int | None = None

    @property
    def ok(self) -> bool:
        health = self.health_after == 200
        if self.up > self.down:
            health = health and self.health_while_down["503"] > 0
        return (
            self.recovered_after is not None
            and not self.acknowledged_while_down
            and health
        )


@dataclass
class OutageReport:
    """The findings of one run over all its outages."""

    database: str
    outages: list[OutageResult] = field(default_factory=list)
    sent: int = 0
    acknowledged: int = 0
    polled: int = 0
    lost_webhooks: list[str] = field(default_factory=list)
    lost_polled: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)
    missing_lines: list[str] = field(default_factory=list)
    unexpected_statuses: Counter[str] = field(default_factory=Counter)
    log_lines: Counter[str] = field(default_factory=Counter)
    log_path: Path | None = None

    @property
    def outages_with_503(self) -> int:
        return sum(1 for outage in self.outages if outage.statuses["503"])

    @property
    def log_ok(self) -> bool:
        lines = self.log_lines
        return (
            lines[WRITER_DOWN] == self.outages_with_503
            and lines[WRITER_UP] == lines[WRITER_DOWN]
            and lines[SINK_UP] == lines[SINK_DOWN]
            and lines[SINK_DOWN] <= len(self.outages)
            and lines["Traceback"] == 0
        )

    @property
    def ok(self) -> bool:
        return (
            all(outage.ok for outage in self.outages)
            and not (self.lost_webhooks or self.lost_polled or self.duplicated)
            and not (self.undelivered or self.missing_lines)
            and not self.unexpected_statuses
            and self.log_ok
        )


class _Load:
    """Webhook clients and a health probe that record every response."""

    def __init__(
        self, webhooks: SimulatedStripe, port: int, clients: int, interval: float
    ) -> None:
        self.webhooks = webhooks
        self.interval = interval
        self.base = f"http://127.0.0.1:{port}"
        self.responses: list[WebhookResponse] = []
        # Health probes as (sent, received, status), with monotonic times.
        self.health: list[tuple[float, float, int | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True) for _ in range(clients)
        ]
        self._threads.append(threading.Thread(target=self._probe, daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while not self._stop.is_set():
                event = self.webhooks.emit(EVENT_TYPES[len(self.responses) % 3])
                body = self.webhooks.webhook_body(event)
                headers = {"Stripe-Signature": self.webhooks.sign(body)}
                sent = time.monotonic()
                try:
                    response = client.post(
                        f"{self.base}/webhooks/payments", content=body, headers=headers
                    )
                    status: int | None = response.status_code
                except httpx.TransportError:
                    status = None
                with self._lock:
                    self.responses.append(
                        WebhookResponse(event["id"], sent, time.monotonic(), status)
                    )
                # A provider waits a little longer after a failure.
                time.sleep(self.interval if status == 200 else self.interval + 0.05)

    def _probe(self) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status: int | None = client.get(f"{self.base}/healthz").status_code
                except httpx.TransportError:
                    status = None
                self.health.append((sent, time.monotonic(), status))
                time.sleep(0.1)

    def acknowledged_since(self, moment: float) -> bool:
        with self._lock:
            return any(
                a.sent >= moment and a.status is not None and 200 <= a.status < 300
                for a in self.responses
            )

    def health_since(self, moment: float) -> int | None:
        """Return the status of the first health probe sent after ``moment``."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = [status for sent, _, status in self.health if sent >= moment]
            if after:
                return after[0]
            time.sleep(0.05)
        return None


def _status_name(status: int | None) -> str:
    return "connection failed" if status is None else str(status)


def _run_outage(outage: Outage, load: _Load, steady: float) -> OutageResult:
    began = time.monotonic()
    outage.begin()
    down = up = time.monotonic()
    if outage.end is not None:
        time.sleep(outage.pause)
        up = time.monotonic()
        outage.end()
    result = OutageResult(outage.name, began, down, up, time.monotonic())

    deadline = result.ended + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        if load.acknowledged_since(result.ended):
            result.recovered_after = time.monotonic() - result.ended
            break
        time.sleep(0.05)
    recovered = time.monotonic()
    result.health_after = load.health_since(recovered)

    time.sleep(steady)
    _tally(result, load, recovered)
    return result


def _tally(result: OutageResult, load: _Load, recovered: float) -> None:
    """Count the responses and health probes of one outage into ``result``."""
    for response in list(load.responses):
        if result.began <= response.sent <= recovered:
            result.statuses[_status_name(response.status)] += 1
        if response.sent < result.down or response.received > result.up:
            continue
        result.statuses_while_down[_status_name(response.status)] += 1
        if response.status is not None and 200 <= response.status < 300:
            result.acknowledged_while_down.append(response.event_id)
    for sent, received, status in list(load.health):
        if result.down <= sent and received <= result.up:
            result.health_while_down[_status_name(status)] += 1


def run_outages(
    database: str,
    outages: list[Outage],
    *,
    clients: int = 4,
    interval: float = 0.02,
    steady: float = 2.0,
    settle: float = 30.0,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> OutageReport:
    """Run ``syncd run`` on ``database`` under load through each outage.

    Each of ``clients`` threads sends a webhook, waits for the response, then
    waits ``interval`` seconds (50 ms more after a failure). ``steady`` is
    the time under load before, between and after the outages. ``database``
    must be empty. Returns what the checks found.
    """
    directory = Path(workdir or tempfile.mkdtemp(prefix="syncd-outage-"))
    webhooks = SimulatedStripe(api_key=WEBHOOK_KEY, webhook_secret=WEBHOOK_SECRET)
    polled = SimulatedStripe(api_key=POLLED_KEY, webhook_secret="whsec_unused")
    port = _free_port()
    config = _write_config(directory, database, port, webhooks.serve(), polled.serve())
    daemon = _Daemon(config, port, directory)
    report = OutageReport(database=redact_url(database))
    report.log_path = directory / "syncd-001.log"
    echo(f"store outage: {len(outages)} outage(s); files in {directory}")
    emitting = threading.Event()
    emitter = threading.Thread(target=_emit, args=(polled, emitting), daemon=True)
    try:
        daemon.start()
        load = _Load(webhooks, port, clients, interval)
        load.start()
        emitter.start()
        time.sleep(steady)
        for outage in outages:
            result = _run_outage(outage, load, steady)
            report.outages.append(result)
            echo(_outage_line(result))
        load.stop()
        emitting.set()
        emitter.join(30)
        _check_log_contents(
            report, load, polled, database, directory, settle, daemon.pid
        )
    finally:
        emitting.set()
        daemon.stop()
        webhooks.stop()
        polled.stop()
    report.log_lines = _count_log_lines(report.log_path)
    return report


def _emit(polled: SimulatedStripe, stop: threading.Event) -> None:
    index = 0
    while not stop.wait(0.1):
        polled.emit(EVENT_TYPES[index % 3])
        index += 1


def _check_log_contents(
    report: OutageReport,
    load: _Load,
    polled: SimulatedStripe,
    database: str,
    directory: Path,
    settle: float,
    live_pid: int,
) -> None:
    """Wait for polls and deliveries to catch up, then compare the log."""
    checker = _Checker(database, directory / "sink.jsonl")
    try:
        expected_polled = set(polled.truth())

        def caught_up() -> bool:
            undelivered, _held = checker.delivery_gaps(live_pid)
            return expected_polled <= set(checker.keys("ledger")) and not undelivered

        def progress() -> int:
            return len(checker.keys("ledger")) + checker.delivered_count()

        _wait_for(caught_up, progress, settle)
        acknowledged = {
            a.event_id
            for a in load.responses
            if a.status is not None and 200 <= a.status < 300
        }
        payments = checker.keys("payments")
        ledger = checker.keys("ledger")
        report.sent = len(load.responses)
        report.acknowledged = len(acknowledged)
        report.polled = len(expected_polled)
        report.lost_webhooks = sorted(acknowledged - set(payments))
        report.lost_polled = sorted(expected_polled - set(ledger))
        report.duplicated = checker.duplicated()
        for keys in (payments, ledger):
            report.duplicated += sorted(k for k, n in Counter(keys).items() if n > 1)
        report.undelivered, _held = checker.delivery_gaps(live_pid)
        report.missing_lines = sorted(checker.delivered_keys() - checker.sink_keys())
        report.unexpected_statuses = Counter(
            _status_name(a.status)
            for a in load.responses
            if a.status is not None and a.status not in (200, 503)
        )
    finally:
        checker.close()


def _count_log_lines(path: Path) -> Counter[str]:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    lines = text.splitlines()
    fragments = (WRITER_DOWN, WRITER_UP, SINK_DOWN, SINK_UP, POLL_FAILED, "Traceback")
    return Counter({f: sum(f in line for line in lines) for f in fragments})


def _outage_line(result: OutageResult) -> str:
    recovered = (
        f"2xx again {result.recovered_after:.2f}s after it"
        if result.recovered_after is not None
        else f"no 2xx within {RECOVERY_TIMEOUT:.0f}s after it"
    )
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(result.statuses.items()))
    health = ", ".join(f"{k}: {v}" for k, v in sorted(result.health_while_down.items()))
    line = (
        f"{result.name}: took {result.ended - result.began:.2f}s, {recovered}; "
        f"webhook responses around it {{{statuses}}}; "
        f"/healthz while down {{{health or 'not down'}}}, after {result.health_after}"
    )
    if result.acknowledged_while_down:
        line += f"\n  2xx while down: {result.acknowledged_while_down[:10]}"
    return line


def summary(report: OutageReport) -> str:
    """Return the closing lines of a run."""
    lines = [
        f"webhooks sent {report.sent}, acknowledged {report.acknowledged}; "
        f"polled events {report.polled}",
        f"lost webhooks {len(report.lost_webhooks)}, lost polled "
        f"{len(report.lost_polled)}, duplicated {len(report.duplicated)}, "
        f"undelivered {len(report.undelivered) + len(report.missing_lines)}, "
        f"responses other than 200 or 503 "
        f"{dict(report.unexpected_statuses)}",
        "daemon log: "
        + ", ".join(f"{k!r} {v}" for k, v in report.log_lines.items())
        + f" ({report.log_path})",
        "result: " + ("ok" if report.ok else "FAILED"),
    ]
    return "\n".join(lines)


def _outages_from(args: argparse.Namespace, cluster: ThrowawayCluster | None):
    if cluster is not None:
        return [
            Outage("restart -m fast", cluster.restart),
            Outage("stop, pause, start", cluster.stop, cluster.start, args.pause),
        ]
    outages = []
    if args.restart_command:
        restart = shlex.split(args.restart_command)
        outages.append(command_outage("restart", restart, None, 0.0))
    if args.stop_command:
        stop, start = shlex.split(args.stop_command), shlex.split(args.start_command)
        outages.append(command_outage("stop, pause, start", stop, start, args.pause))
    return outages


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_outage",
        description="Restart PostgreSQL under syncd run and check that no "
        "acknowledged webhook is lost. Without --database it starts and "
        "restarts a throwaway cluster of its own. Never point it at a shared "
        "production server.",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="Database on the server to restart; the run uses a schema of its "
        "own in it and drops it at the end. Needs --restart-command or "
        "--stop-command.",
    )
    parser.add_argument(
        "--restart-command",
        metavar="CMD",
        help="Command that restarts the server of --database and returns once "
        "it accepts connections again, e.g. 'pg_ctlcluster "
        "--skip-systemctl-redirect 15 main restart'.",
    )
    parser.add_argument(
        "--stop-command", metavar="CMD", help="Command that stops the server."
    )
    parser.add_argument(
        "--start-command", metavar="CMD", help="Command that starts it again."
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=2.0,
        help="Seconds between the stop and the start (default 2).",
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="Concurrent webhook clients (default 4)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.database and not (args.restart_command or args.stop_command):
        parser.error("--database needs --restart-command or --stop-command")
    if bool(args.stop_command) != bool(args.start_command):
        parser.error("--stop-command and --start-command go together")
    if not args.database and (args.restart_command or args.stop_command):
        parser.error("the commands restart the server of --database; pass it too")
    # SIGTERM ends the run through the finally blocks, which stop the daemon.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    print(f"started at {datetime.now(UTC).isoformat(timespec='seconds')}")
    if args.database:
        with private_schema(args.database) as url:
            report = run_outages(url, _outages_from(args, None), clients=args.clients)
    else:
        problem = cluster_problem()
        if problem is not None:
            print(f"error: cannot start a throwaway cluster: {problem}")
            return 1
        with throwaway_cluster() as cluster:
            outages = _outages_from(args, cluster)
            url = cluster.create_database("syncd_outage")
            report = run_outages(url, outages, clients=args.clients)
    print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
