"""One backfill in its own process, so that its peak memory is its own.

``python bench/backfill.py MODE DATABASE_URL BASE_URL COUNT NEWEST`` lists
events ``0 .. COUNT-1`` of the bench provider and prints one JSON object:

- ``syncd``: a real ``ProviderRunner.reconcile`` into DATABASE_URL, one
  transaction per page, as ``syncd reconcile`` runs it.
- ``fetch``: the baseline, which fetches and parses the same pages with
  httpx and stores nothing.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.provider import API_KEY, MAX_LIMIT
from syncd import config as config_module
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime


def make_config(database_url: str, base_url: str) -> config_module.Config:
    provider = {
        "connector": "stripe",
        "api_base_url": base_url,
        "api_token": API_KEY,
        "page_size": MAX_LIMIT,
        "max_retry_wait": "1s",
    }
    return config_module.parse(
        {"daemon": {"database": database_url}, "providers": {"payments": provider}}
    )


def run_syncd(database_url: str, base_url: str, count: int, newest: int) -> dict:
    runtime = Runtime.open(make_config(database_url, base_url))
    with httpx.Client(trust_env=False, timeout=30.0) as client:
        runner = ProviderRunner(runtime.store, runtime.connectors["payments"], client)
        since = datetime.fromtimestamp(newest - count + 1, UTC)
        until = datetime.fromtimestamp(newest, UTC)
        started = time.perf_counter()
        report = runner.reconcile(since, until, trigger="bench")
        seconds = time.perf_counter() - started
    runtime.close()
    if not report.ok:
        raise SystemExit(f"reconcile failed: {report.error}")
    return {
        "events": report.new,
        "listed": report.listed,
        "requests": report.requests,
        "pages": report.pages,
        "seconds": seconds,
    }


def run_fetch(base_url: str, count: int, newest: int) -> dict:
    params: dict[str, str | int] = {
        "limit": MAX_LIMIT,
        "created[gte]": newest - count + 1,
        "created[lte]": newest,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    listed = requests = 0
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, headers=headers, trust_env=False) as client:
        while True:
            response = client.get("/v1/events", params=params)
            requests += 1
            response.raise_for_status()
            body = response.json()
            listed += len(body["data"])
            if not body["has_more"]:
                break
            params["starting_after"] = body["data"][-1]["id"]
    seconds = time.perf_counter() - started
    return {
        "events": listed,
        "listed": listed,
        "requests": requests,
        "pages": requests,
        "seconds": seconds,
    }


def peak_rss_mb() -> float:
    """Return this process's peak resident set size (VmHWM) in MiB.

    ``ru_maxrss`` is not used because Linux carries it across ``exec``, so a
    child of a large parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # the value is in kB
    raise RuntimeError("no VmHWM line in /proc/self/status")


def main() -> None:
    mode, database_url, base_url = sys.argv[1:4]
    count, newest = int(sys.argv[4]), int(sys.argv[5])
    if mode == "syncd":
        result = run_syncd(database_url, base_url, count, newest)
    else:
        result = run_fetch(base_url, count, newest)
    result["peak_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
