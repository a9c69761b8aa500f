"""Wiring of the daemon: webhook server, scheduled runs, writer, and signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from connectors.base import Connector
from syncd import __version__, systemd
from syncd import config as config_module
from syncd.config import Config
from syncd.delivery import DeliveryWorker
from syncd.errors import (
    ConfigError,
    ListenError,
    StoppingError,
    StoreUnavailableError,
)
from syncd.gauges import REFRESH_SECONDS, refresh_gauges
from syncd.intake import IntakeState, create_app
from syncd.limits import uvicorn_options
from syncd.pacing import RateBudgets
from syncd.reconcile import ProviderRunner
from syncd.reload import Changes, plan_reload
from syncd.runtime import Runtime, build_connector, policy_of, route_of
from syncd.sink_config import SinkConfig
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

    def __init__(
        self,
        config: uvicorn.Config,
        state: IntakeState,
        dead_part: Callable[[], str | None],
    ) -> None:
        super().__init__(config)
        self.intake_state = state
        self.dead_part = dead_part
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
            self._watchdog = asyncio.create_task(
                systemd.ping_watchdog(interval, self.dead_part)
            )

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


def bind_listen_socket(listen: str) -> socket.socket:
    """Bind the webhook socket before anything else starts.

    A port in use then stops the start at once with a message naming
    ``[daemon] listen``, before any poll runs. Raises ListenError.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    # As uvicorn chooses: IPv6 only for an address with a colon, so that
    # "localhost" means 127.0.0.1 whatever the resolver lists first.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = None
    try:
        # With the protocol named, asyncio sets TCP_NODELAY on each accepted
        # connection. Without it, a response written in two parts waits for
        # the client's delayed ACK, about 40 ms on Linux.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ListenError(
            f"cannot listen on {listen} ({exc.strerror or exc}); change [daemon] "
            "listen, or stop the process that uses that address"
        ) from None
    return sock


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
        self.budgets = RateBudgets(runtime.clock)
        self._stop_runs = threading.Event()
        self._reload_lock = threading.Lock()
        self.runners = {
            name: self._runner(connector)
            for name, connector in runtime.connectors.items()
        }
        self.workers = {
            name: self._worker(sink) for name, sink in runtime.config.sinks.items()
        }
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
                # syncd reads no client address, so X-Forwarded-* is not needed.
                proxy_headers=False,
                timeout_graceful_shutdown=int(daemon.shutdown_timeout.total_seconds()),
                **uvicorn_options(daemon),
            ),
            self.state,
            self._dead_part,
        )

    def _runner(self, connector: Connector) -> ProviderRunner:
        return ProviderRunner(
            self.runtime.store,
            connector,
            self.client,
            metrics=self.runtime.metrics,
            clock=self.runtime.clock,
            budgets=self.budgets,
            sleep=self._wait_unless_stopping,
            stopping=self._stop_runs.is_set,
        )

    def _worker(self, sink: SinkConfig) -> DeliveryWorker:
        return DeliveryWorker(
            self.runtime.store,
            build_sink(sink),
            route_of(sink),
            policy_of(sink),
            ordered=sink.ordering == "resource",
            lease=max(timedelta(minutes=5), sink.timeout * 20),
            metrics=self.runtime.metrics,
        )

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop every part in order.

        SIGHUP reloads the configuration file (see :meth:`reload`).
        """
        if self.sock is None:
            self.sock = bind_listen_socket(self.runtime.config.daemon.listen)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._on_sighup)
        self._start_background()
        # What start-up built lives as long as the process. Freezing it keeps
        # full garbage collections from scanning it again. Under webhook load
        # they took about 50 ms each here before, and under 1 ms after.
        gc.freeze()
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
        for worker in self.workers.values():
            worker.start()
        self._schedule_jobs()
        self.scheduler.start()

    def _on_sighup(self, _sig: int, _frame: object) -> None:
        # The handler runs on the main thread, which serves webhooks; the
        # reload waits for sink workers, so it runs on a thread of its own.
        threading.Thread(target=self.reload, name="syncd-reload", daemon=True).start()

    def reload(self) -> bool:
        """Read the configuration file again and apply what can change live.

        Providers and sinks are added, removed or replaced while webhooks keep
        being served. A changed ``[daemon]`` key is logged and waits for a
        restart. A file with errors changes nothing. Return True when the
        file was applied.
        """
        with self._reload_lock:
            if self.state.stopping:
                log.info("reload skipped: syncd is stopping")
                return False
            systemd.notify(
                "RELOADING=1",
                f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                systemd.status_line("reloading the configuration"),
            )
            try:
                return self._reload()
            except Exception:  # noqa: BLE001 - a reload must never end the daemon
                log.exception(
                    "reload of %s stopped part-way; restart syncd "
                    "(systemctl restart syncd) to apply the file in full",
                    self.runtime.config.path,
                )
                return False
            finally:
                systemd.notify("READY=1", systemd.status_line(self._serving_line()))

    def _reload(self) -> bool:
        running = self.runtime.config
        loaded = self._read_again(running)
        if loaded is None:
            return False

        plan = plan_reload(running, loaded)
        for key in plan.restart_keys:
            log.warning(
                "daemon.%s changed in %s; it applies at the next restart "
                "(systemctl restart syncd), not on reload",
                key,
                running.path,
            )
        loaded.daemon = running.daemon
        self._apply_providers(plan.providers, loaded)
        self._apply_sinks(plan.sinks, loaded)
        self.runtime.config = loaded
        log.info("configuration reloaded from %s: %s", running.path, plan.summary())
        return True

    def _read_again(self, running: Config) -> Config | None:
        """Load the running configuration's file; None when it cannot apply."""
        if running.path is None:
            log.warning("reload skipped: this daemon runs a configuration with no file")
            return None
        try:
            loaded = config_module.load(running.path)
        except ConfigError as exc:
            log.error(
                "reload of %s failed, so the running configuration stays: %s",
                running.path,
                "; ".join(exc.problems),
            )
            return None
        if running.providers and not loaded.providers:
            log.error(
                "reload of %s failed, so the running configuration stays: the "
                "file names no [providers.NAME] table. If it was being written, "
                "write it beside the old one, move it into place, and reload",
                running.path,
            )
            return None
        return loaded

    def _apply_providers(self, changes: Changes, loaded: Config) -> None:
        """Swap the connectors webhooks are checked against, then the runs."""
        connectors = {
            name: connector
            for name, connector in self.runtime.connectors.items()
            if name in loaded.providers and name not in changes.changed
        }
        for name in changes.added + changes.changed:
            connectors[name] = build_connector(loaded.providers[name])
        for name in changes.removed + changes.changed:
            self._unschedule_provider(name)
        self.runtime.connectors = connectors
        runners = {n: r for n, r in self.runners.items() if n in connectors}
        for name in changes.added + changes.changed:
            runners[name] = self._runner(connectors[name])
            self._schedule_provider(name, runners[name])
        self.runners = runners
        if changes.removed:
            log.info(
                "providers removed: %s; their logged events and cursors stay, "
                "and their webhooks now get 404",
                ", ".join(changes.removed),
            )

    def _apply_sinks(self, changes: Changes, loaded: Config) -> None:
        """Route new events to the loaded sinks and restart changed workers."""
        self.runtime.store.sink_routes = [route_of(s) for s in loaded.sinks.values()]
        workers = dict(self.workers)
        for name in changes.removed + changes.changed:
            workers.pop(name).stop()
        for name in changes.added + changes.changed:
            workers[name] = self._worker(loaded.sinks[name])
            workers[name].start()
        self.workers = workers
        for name in changes.added:
            log.info(
                "sink %s receives events logged from now on; to send it earlier "
                "ones, run: syncd deliveries replay --sink %s --since WHEN",
                name,
                name,
            )
        for name in changes.removed:
            log.warning(
                "sink %s removed; its pending deliveries stay in the outbox and "
                "resume if the sink is added back",
                name,
            )

    def _dead_part(self) -> str | None:
        """Name a background thread that ended while serving, if any."""
        if self._reload_lock.locked():
            return None  # a reload is replacing sink workers
        if not self.writer.is_alive():
            return "the thread that commits webhooks"
        if not self.scheduler.running:
            return "the scheduler of polls and reconciles"
        for name, worker in self.workers.items():
            if not worker.is_alive():
                return f"the delivery thread of sink {name}"
        return None

    def _serving_line(self) -> str:
        names = ", ".join(self.runtime.connectors) or "no providers"
        return f"serving {names}"

    def _wait_unless_stopping(self, seconds: float) -> None:
        """Wait between provider requests, but end the run at once on stop.

        Without this a retry or rate-limit wait (up to max_retry_wait each)
        would hold the stop past systemd's TimeoutStopSec.
        """
        if self._stop_runs.wait(seconds):
            raise StoppingError(StoppingError.MESSAGE)

    def _stop_background(self) -> None:
        self.state.stopping = True
        self._stop_runs.set()
        log.info("stopping scheduled runs (a running page finishes its commit)")
        self.scheduler.shutdown(wait=True)
        log.info("committing queued webhooks")
        self.writer.stop()
        with self._reload_lock:
            if self.workers:
                log.info("stopping sink workers (a delivery in hand finishes)")
            for worker in self.workers.values():
                worker.stop()
        self.client.close()
        self.runtime.close()
        log.info("syncd stopped")

    def _schedule_jobs(self) -> None:
        for name, runner in self.runners.items():
            self._schedule_provider(name, runner)
        self.scheduler.add_job(
            self._refresh_gauges,
            "interval",
            seconds=REFRESH_SECONDS,
            id="metrics",
            name="refresh metrics",
            next_run_time=datetime.now(UTC),
        )

    def _schedule_provider(self, name: str, runner: ProviderRunner) -> None:
        """Record the provider's first start, then schedule its poll or reconcile.

        Reconciles start 10 s after the daemon so its webhooks come first;
        polls start at once. A job already running under the same id finishes
        first, since each id runs one instance at a time.
        """
        try:
            runner.origin(datetime.fromtimestamp(self.runtime.clock(), UTC))
        except StoreUnavailableError as exc:
            log.warning("%s: first start time not recorded: %s", name, exc)
        settings = runner.connector.provider
        now = datetime.now(UTC)
        if settings.webhooks_enabled:
            kind, job, interval = (
                "reconcile",
                runner.reconcile,
                settings.reconcile_interval,
            )
            first = now + timedelta(seconds=10)
        else:
            kind, job, interval = "poll", runner.poll, settings.poll_interval
            first = now
        self.scheduler.add_job(
            job,
            "interval",
            seconds=interval.total_seconds(),
            id=f"{kind}:{name}",
            name=f"{kind} {name}",
            next_run_time=first,
            replace_existing=True,
        )

    def _unschedule_provider(self, name: str) -> None:
        for kind in ("poll", "reconcile"):
            job = self.scheduler.get_job(f"{kind}:{name}")
            if job is not None:
                job.remove()

    def _refresh_gauges(self) -> None:
        refresh_gauges(
            self.runtime.store,
            self.runtime.metrics,
            self.runtime.config.sinks,
            datetime.now(UTC),
        )

    def _count_commit(self, provider: str, source: str, result: WriteResult) -> None:
        if result.new:
            for worker in list(self.workers.values()):
                worker.wake()
            self.runtime.metrics.events_logged.labels(provider, source).inc(
                len(result.new)
            )
        if source == "webhook":
            received = self.runtime.clock()
            lag = self.runtime.metrics.webhook_lag.labels(provider)
            for record in result.new:
                lag.observe(max(0.0, received - record.occurred_at.timestamp()))
