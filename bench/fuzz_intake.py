"""Fuzz the webhook server with 10,000 or more random requests and count outcomes.

Runs the cases of ``tests/test_fuzz_intake.py`` through the ASGI app with a
real store: SQLite in a temporary directory, or ``--database URL``. Prints
the number of cases and the count of each status. Then prints the server
errors (500 to 599 other than 503), the unexpected statuses, and the rejected
requests that changed a table's row count, and exits 1 if any is not zero.

    python bench/fuzz_intake.py --cases 10000 [--seed 1] [--database URL]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seed_decorator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from syncd.store import Store  # noqa: E402
from tests.test_fuzz_intake import (  # noqa: E402
    ALLOWED,
    Case,
    cases,
    check_case,
    check_still_serving,
)
from tests.webhook_apps import open_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases to run")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed")
    parser.add_argument("--database", help="database URL [default: temporary SQLite]")
    args = parser.parse_args()
    # Each rejection is logged; only errors are shown, so the counts stay readable.
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as directory:
        url = args.database or f"sqlite:///{Path(directory) / 'fuzz.db'}"
        store = Store(url)
        try:
            return run(store, args.cases, args.seed)
        finally:
            store.dispose()


def run(store: Store, count: int, seed: int) -> int:
    statuses: Counter[int] = Counter()
    changed = 0
    started = time.monotonic()
    with open_app(store) as app:

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases())
        def fuzz(case: Case) -> None:
            nonlocal changed
            outcome = check_case(app, case)
            statuses[outcome.status] += 1
            changed += outcome.changed_on_reject

        seed_decorator(seed)(fuzz)()
        health, stored = check_still_serving(app)

    seconds = time.monotonic() - started
    total = sum(statuses.values())
    server_errors = sum(n for s, n in statuses.items() if s >= 500 and s != 503)
    unexpected = sum(n for s, n in statuses.items() if s not in ALLOWED)
    print(f"cases: {total}")
    print(f"statuses: {dict(sorted(statuses.items()))}")
    print(f"server errors (5xx except 503): {server_errors}")
    print(f"unexpected statuses: {unexpected}")
    print(f"store changes from rejected requests: {changed}")
    print(f"after the run: /healthz {health}, a valid webhook {stored}")
    print(f"seconds: {seconds:.1f} ({store.dialect})")
    failed = server_errors or unexpected or changed or health != 200 or stored != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
