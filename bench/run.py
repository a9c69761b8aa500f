"""Run every syncd benchmark against its baseline and print one table.

    python bench/run.py            # the full run (23 minutes on 2 busy cores)
    python bench/run.py --quick    # a seconds-long smoke run of each figure

Every server it starts (syncd, the baselines, the bench provider) listens on
127.0.0.1 only. PostgreSQL figures use a database ``syncd_bench`` that the run
creates on ``--postgres`` and drops at the end; ``--no-postgres`` skips them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import deliveries, insert, pgdb
from bench.procs import cpu_seconds, free_port, run_json, server
from bench.provider import API_KEY, MAX_LIMIT

WEBHOOK_SECRET = "whsec_bench_secret"
CONNECTIONS = 16
IDLE_PROVIDERS = 20


@dataclass
class Scale:
    """How much work each benchmark does."""

    intake_seconds: float
    reconcile_events: int
    insert_events: int
    memory_small: int
    memory_large: int
    idle_seconds: float
    idle_warmup: float
    delivery_events: int = 20_000


FULL = Scale(20.0, 200_000, 200_000, 100_000, 1_000_000, 60.0, 15.0)
QUICK = Scale(1.0, 2_000, 2_000, 1_000, 5_000, 1.0, 1.0, delivery_events=500)


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    store: str
    syncd: float
    baseline: float | None
    unit: str
    target: str
    passed: bool

    @property
    def ratio(self) -> str:
        if not self.baseline:
            return "-"
        return f"{self.syncd / self.baseline:.3f}x"


def daemon_config(
    directory: Path, database: str, port: int, api_port: int, providers: int = 1
) -> Path:
    """Write a ``syncd run`` configuration whose providers use the bench API."""
    lines = [
        "[daemon]",
        f'database = "{database}"',
        f'listen = "127.0.0.1:{port}"',
    ]
    for number in range(providers):
        name = "payments" if number == 0 else f"payments{number}"
        lines += [
            f"[providers.{name}]",
            'connector = "stripe"',
            f'api_base_url = "http://127.0.0.1:{api_port}"',
            'api_token = { env = "BENCH_API_KEY" }',
            'webhook_secret = { env = "BENCH_WEBHOOK_SECRET" }',
        ]
    path = directory / f"syncd-{port}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


DAEMON_ENV = {"BENCH_API_KEY": API_KEY, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET}


def load(port: int, seconds: float) -> dict:
    args = ["-m", "bench.loadgen", str(port), str(seconds), str(CONNECTIONS)]
    return run_json([*args, WEBHOOK_SECRET])


def bench_intake(workdir: Path, database: str, store: str, scale: Scale) -> list[Row]:
    """Time signed webhooks from 16 connections: syncd and a bare handler."""
    port = free_port()
    with server(["-m", "bench.baseline_app", str(port)], port):
        baseline = load(port, scale.intake_seconds)

    api_port, port = free_port(), free_port()
    config = daemon_config(workdir, database, port, api_port)
    provider = ["-m", "bench.provider", str(api_port), "0", str(int(time.time()))]
    run = ["-m", "syncd.cli", "run", "-c", str(config)]
    log = workdir / f"syncd-intake-{store}.log"
    with server(provider, api_port), server(run, port, env=DAEMON_ENV, log=log):
        syncd = load(port, scale.intake_seconds)

    for name, result in (("baseline", baseline), ("syncd", syncd)):
        if result["errors"]:
            raise RuntimeError(
                f"{name} returned a status other than 200 to "
                f"{result['errors']} webhooks"
            )
    ratio = syncd["rps"] / baseline["rps"]
    return [
        Row(
            "intake throughput",
            store,
            syncd["rps"],
            baseline["rps"],
            "req/s",
            ">= 0.5x",
            ratio >= 0.5,
        ),
        Row(
            "intake p99 latency",
            store,
            syncd["p99_ms"],
            baseline["p99_ms"],
            "ms",
            "<= 10 ms",
            syncd["p99_ms"] <= 10.0,
        ),
    ]


def bench_reconcile(database: str, store: str, count: int) -> list[Row]:
    """Time a reconcile of ``count`` events and a fetch of the same pages."""
    port, newest = free_port(), int(time.time())
    base_url = f"http://127.0.0.1:{port}"
    tail = [base_url, str(count), str(newest)]
    with server(["-m", "bench.provider", str(port), str(count), str(newest)], port):
        baseline = run_json(["-m", "bench.backfill", "fetch", "-", *tail])
        syncd = run_json(["-m", "bench.backfill", "syncd", database, *tail])
    if syncd["events"] != count or baseline["listed"] != count:
        raise RuntimeError(
            f"listed {syncd['events']} and {baseline['listed']} of {count} events"
        )
    rate, base_rate = count / syncd["seconds"], count / baseline["seconds"]
    pages = math.ceil(count / MAX_LIMIT) or 1
    return [
        Row(
            "reconcile throughput",
            store,
            rate,
            base_rate,
            "events/s",
            ">= 0.7x",
            rate >= 0.7 * base_rate,
        ),
        Row(
            "HTTP requests per reconcile",
            store,
            syncd["requests"],
            pages,
            "requests",
            "equal",
            syncd["requests"] == pages,
        ),
    ]


def bench_insert(workdir: Path, database: str, store: str, count: int) -> list[Row]:
    """Time record_events per page of 100, and per 1,000 rows as the baseline."""
    records = insert.make_records(count, int(time.time()))
    timings = []
    for batch in (MAX_LIMIT, insert.BASELINE_BATCH):
        if store == "sqlite":
            url = f"sqlite:///{workdir}/insert-{batch}.db"
        else:
            url = database
            pgdb.reset(url)
        timings.append(insert.time_syncd(url, records, batch))
    if store == "sqlite":
        base = insert.time_sqlite_baseline(str(workdir / "raw.db"), records)
    else:
        pgdb.reset(database)
        base = insert.time_postgres_baseline(database, records)
    base_rate = count / base
    rows = []
    labels = ("per page of 100", "per 1,000 rows")
    for label, seconds in zip(labels, timings, strict=True):
        rate = count / seconds
        rows.append(
            Row(
                f"dedup+insert stage, {label}",
                store,
                rate,
                base_rate,
                "events/s",
                ">= 0.5x",
                rate >= 0.5 * base_rate,
            )
        )
    return rows


def backfill_peak(database: str, count: int, port: int, newest: int) -> float:
    args = ["-m", "bench.backfill", "syncd", database, f"http://127.0.0.1:{port}"]
    return run_json([*args, str(count), str(newest)])["peak_mb"]


def bench_memory(databases: tuple[str, str], store: str, scale: Scale) -> Row:
    """Measure the peak RSS of a large backfill and of a smaller one."""
    port, newest = free_port(), int(time.time())
    count = scale.memory_large
    with server(["-m", "bench.provider", str(port), str(count), str(newest)], port):
        small = backfill_peak(databases[0], scale.memory_small, port, newest)
        large = backfill_peak(databases[1], count, port, newest)
    passed = large <= 150 and large <= 1.2 * small
    label = f"peak memory, {count:,}-event backfill"
    return Row(label, store, large, small, "MB", "<= 150 MB, <= 1.2x", passed)


def bench_idle(workdir: Path, database: str, scale: Scale) -> Row:
    """Measure the CPU use of a daemon with 20 providers and no traffic."""
    api_port, port = free_port(), free_port()
    config = daemon_config(workdir, database, port, api_port, IDLE_PROVIDERS)
    provider = ["-m", "bench.provider", str(api_port), "0", str(int(time.time()))]
    run = ["-m", "syncd.cli", "run", "-c", str(config)]
    log = workdir / "syncd-idle.log"
    with server(provider, api_port), server(run, port, env=DAEMON_ENV, log=log) as p:
        # The warm-up covers start-up and the first reconciles, due 10 s in.
        time.sleep(scale.idle_warmup)
        before, started = cpu_seconds(p.pid), time.monotonic()
        time.sleep(scale.idle_seconds)
        used = cpu_seconds(p.pid) - before
        share = 100 * used / (time.monotonic() - started)
    label = f"idle CPU, {IDLE_PROVIDERS} providers, {scale.idle_seconds:.0f} s"
    return Row(label, "sqlite", share, None, "% of a core", "< 1%", share < 1.0)


def bench_deliveries(target: deliveries.Target, count: int) -> list[Row]:
    """Time one delivery worker draining a backlog to a jsonl sink, and a raw loop."""
    return [
        Row(
            figure,
            target.store,
            rate,
            base,
            "deliveries/s",
            ">= 0.5x",
            rate >= base / 2,
        )
        for figure, rate, base in deliveries.figures(target, count)
    ]


def sqlite_rows(workdir: Path, scale: Scale) -> list[Row]:
    def db(name: str) -> str:
        return f"sqlite:///{workdir / name}.db"

    rows = show(bench_intake(workdir, db("intake"), "sqlite", scale))
    rows += show(bench_reconcile(db("reconcile"), "sqlite", scale.reconcile_events))
    rows += show(bench_insert(workdir, db("insert"), "sqlite", scale.insert_events))
    rows += show([bench_memory((db("small"), db("large")), "sqlite", scale)])
    rows += show([bench_idle(workdir, db("idle"), scale)])
    target = deliveries.Target("sqlite", workdir)
    rows += show(bench_deliveries(target, scale.delivery_events))
    return rows


def postgres_rows(workdir: Path, url: str, scale: Scale) -> list[Row]:
    pgdb.reset(url)
    rows = show(bench_intake(workdir, url, "postgresql", scale))
    pgdb.reset(url)
    rows += show(bench_reconcile(url, "postgresql", scale.reconcile_events))
    rows += show(bench_insert(workdir, url, "postgresql", scale.insert_events))
    target = deliveries.Target("postgresql", workdir, url)
    rows += show(bench_deliveries(target, scale.delivery_events))
    return rows


def show(rows: list[Row]) -> list[Row]:
    """Print rows to stderr as they are measured, so a stopped run keeps them."""
    for row in rows:
        print(format_row(row), file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| figure | store | syncd | baseline | ratio | target | pass |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [format_row(row) for row in rows]
    return "\n".join(lines)


def format_row(row: Row) -> str:
    base = "-" if row.baseline is None else f"{row.baseline:,.1f}"
    return (
        f"| {row.figure} | {row.store} | {row.syncd:,.1f} {row.unit} | {base} "
        f"| {row.ratio} | {row.target} | {'yes' if row.passed else 'NO'} |"
    )


def machine_line() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; load average {load}; "
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run a seconds-long smoke version of each benchmark",
    )
    parser.add_argument(
        "--postgres",
        default=pgdb.DEFAULT_URL,
        help="PostgreSQL URL of the bench database, created and "
        "dropped by the run (default: %(default)s)",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the PostgreSQL figures"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    scale = QUICK if args.quick else FULL
    started = machine_line()
    with tempfile.TemporaryDirectory(prefix="syncd-bench-") as directory:
        workdir = Path(directory)
        rows = sqlite_rows(workdir, scale)
        if not args.no_postgres:
            with pgdb.bench_database(args.postgres) as url:
                rows += postgres_rows(workdir, url, scale)
    finished = machine_line()
    output = f"start {started}\nend   {finished}\n\n{format_table(rows)}"
    print(output, flush=True)
    return output


if __name__ == "__main__":
    main()
