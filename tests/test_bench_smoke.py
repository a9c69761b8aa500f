"""Smoke test of the benchmark suite: ``bench/run.py --quick`` runs and prints.

It checks that every figure is measured and printed, never how fast: timings
on a shared machine are not something a test can assert.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "intake throughput",
    "intake p99 latency",
    "reconcile throughput",
    "HTTP requests per reconcile",
    "dedup+insert stage, per page of 100",
    "peak memory",
    "idle CPU",
)


@pytest.mark.e2e
def test_quick_bench_prints_table() -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--no-postgres"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout
    assert "| figure | store | syncd | baseline | ratio | target | pass |" in output
    assert "cores" in output
    assert "Python 3." in output
    for figure in FIGURES:
        assert f"| {figure}" in output, f"{figure!r} missing from:\n{output}"
