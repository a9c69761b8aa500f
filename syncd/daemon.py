"""Wiring of the daemon: webhook server, scheduled runs, writer, and signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from syncd import __version__, systemd
from syncd.delivery import DeliveryWorker
from syncd.errors import ProviderError, StoreUnavailableError
from syncd.gauges import REFRESH_SECONDS, refresh_gauges
from syncd.intake import IntakeState, create_app
from syncd.limits import uvicorn_options
from syncd.pacing import RateBudgets
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime, policy_of, route_of
from syncd.sinks import build_sink
from syncd.store import WriteResult
from syncd.writer import BatchWriter

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that answers 503 as soon as it is asked to stop.

    It tells systemd READY=1 once the socket listens (the store is opened and
    its schema created before the server starts), pings the watchdog from its
    own event loop, and sends STOPPING=1 on the first stop signal.
    """

    def __init__(self, config: uvicorn.Config, state: IntakeState) -> None:
        super().__init__(config)
        self.intake_state = state
        self._watchdog: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        listening = ", ".join(
            _address(sock) for server in self.servers for sock in server.sockets
        )
        log.info("listening for webhooks on %s", listening)
        systemd.notify("READY=1", systemd.status_line(f"serving on {listening}"))
        interval = systemd.watchdog_interval()
        if interval is not None:
            self._watchdog = asyncio.create_task(systemd.ping_watchdog(interval))

    def handle_exit(self, sig: int, frame: object) -> None:
        # uvicorn's own handler re-raises the signal once serving ends, which
        # would kill the process before the scheduler and writer stop.
        if not self.intake_state.stopping:
            log.info("signal %d received; new webhooks now get 503", sig)
            systemd.notify("STOPPING=1", systemd.status_line("stopping"))
        self.intake_state.stopping = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def _address(sock: socket.socket) -> str:
    address = sock.getsockname()
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


class Daemon:
    """The long-running process behind ``syncd run``."""

    def __init__(self, runtime: Runtime, *, sock: socket.socket | None = None) -> None:
        self.runtime = runtime
        self.sock = sock
        self.writer = BatchWriter(
            runtime.store,
            clock=lambda: datetime.fromtimestamp(runtime.clock(), UTC),
            on_commit=self._count_commit,
        )
        self.state = IntakeState(runtime=runtime, writer=self.writer)
        self.client = httpx.Client(headers={"User-Agent": f"syncd/{__version__}"})
        budgets = RateBudgets(runtime.clock)
        self._stop_runs = threading.Event()
        self.runners = {
            name: ProviderRunner(
                runtime.store,
                connector,
                self.client,
                metrics=runtime.metrics,
                clock=runtime.clock,
                budgets=budgets,
                sleep=self._wait_unless_stopping,
            )
            for name, connector in runtime.connectors.items()
        }
        self.workers = [
            DeliveryWorker(
                runtime.store,
                build_sink(sink),
                route_of(sink),
                policy_of(sink),
                ordered=sink.ordering == "resource",
                lease=max(timedelta(minutes=5), sink.timeout * 20),
                metrics=runtime.metrics,
            )
            for sink in runtime.config.sinks.values()
        ]
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": 60,
            },
        )
        daemon = runtime.config.daemon
        self.server = _Server(
            uvicorn.Config(
                create_app(self.state),
                host=daemon.host,
                port=daemon.port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(daemon.shutdown_timeout.total_seconds()),
                **uvicorn_options(daemon),
            ),
            self.state,
        )

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop every part in order."""
        self._start_background()
        try:
            self.server.run(sockets=[self.sock] if self.sock else None)
        finally:
            self._stop_background()

    def start_in_thread(self, timeout: float = 10.0) -> threading.Thread:
        """Start the daemon in a thread (for tests and the demo); wait until ready."""
        thread = threading.Thread(target=self.run, name="syncd-daemon", daemon=True)
        thread.start()
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while not self.server.started:
            if not thread.is_alive() or datetime.now(UTC) > deadline:
                raise RuntimeError("the daemon did not start listening")
            threading.Event().wait(0.02)
        return thread

    def request_stop(self) -> None:
        """Ask a daemon started with :meth:`start_in_thread` to stop."""
        self.state.stopping = True
        self.server.should_exit = True

    def _start_background(self) -> None:
        config = self.runtime.config
        log.info(
            "syncd %s starting: config %s, providers %s",
            __version__,
            config.path or "(built in)",
            ", ".join(f"{n} ({p.mode})" for n, p in config.providers.items()) or "none",
        )
        self.writer.start()
        for worker in self.workers:
            worker.start()
        self._schedule_jobs()
        self.scheduler.start()

    def _wait_unless_stopping(self, seconds: float) -> None:
        """Wait between provider requests, but end the run at once on stop.

        Without this a retry or rate-limit wait (up to max_retry_wait each)
        would hold the stop past systemd's TimeoutStopSec.
        """
        if self._stop_runs.wait(seconds):
            raise ProviderError(
                "syncd is stopping; the next start continues from the cursor"
            )

    def _stop_background(self) -> None:
        self.state.stopping = True
        self._stop_runs.set()
        log.info("stopping scheduled runs (a running page finishes its commit)")
        self.scheduler.shutdown(wait=True)
        log.info("committing queued webhooks")
        self.writer.stop()
        if self.workers:
            log.info("stopping sink workers (a delivery in hand finishes)")
        for worker in self.workers:
            worker.stop()
        self.client.close()
        self.runtime.close()
        log.info("syncd stopped")

    def _schedule_jobs(self) -> None:
        now = datetime.now(UTC)
        for name, runner in self.runners.items():
            try:
                runner.origin(datetime.fromtimestamp(self.runtime.clock(), UTC))
            except StoreUnavailableError as exc:
                log.warning("%s: first start time not recorded: %s", name, exc)
            settings = runner.connector.provider
            if settings.webhooks_enabled:
                interval, job, kind = (
                    settings.reconcile_interval,
                    runner.reconcile,
                    "reconcile",
                )
                first = now + timedelta(seconds=10)
            else:
                interval, job, kind = settings.poll_interval, runner.poll, "poll"
                first = now
            self.scheduler.add_job(
                job,
                "interval",
                seconds=interval.total_seconds(),
                id=f"{kind}:{name}",
                name=f"{kind} {name}",
                next_run_time=first,
            )
        self.scheduler.add_job(
            self._refresh_gauges,
            "interval",
            seconds=REFRESH_SECONDS,
            id="metrics",
            name="refresh metrics",
            next_run_time=now,
        )

    def _refresh_gauges(self) -> None:
        refresh_gauges(
            self.runtime.store,
            self.runtime.metrics,
            self.runtime.config.sinks,
            datetime.now(UTC),
        )

    def _count_commit(self, provider: str, source: str, result: WriteResult) -> None:
        if result.new:
            for worker in self.workers:
                worker.wake()
            self.runtime.metrics.events_logged.labels(provider, source).inc(
                len(result.new)
            )
        if source == "webhook":
            received = self.runtime.clock()
            lag = self.runtime.metrics.webhook_lag.labels(provider)
            for record in result.new:
                lag.observe(max(0.0, received - record.occurred_at.timestamp()))
