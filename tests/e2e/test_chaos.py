"""A short crash-safety run: SIGKILL ``syncd run`` three times under load."""

from __future__ import annotations

import pytest

from bench.chaos import run_chaos

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def report_of():
    """Return a function that runs three chaos trials on a database."""

    def run(database_url, workdir):
        return run_chaos(
            database_url,
            trials=3,
            seed=11,
            max_run=1.5,
            settle=30,
            workdir=workdir,
            echo=lambda _line: None,
        )

    return run


def test_chaos_three_trials(database_url, tmp_path, report_of):
    """Three kills lose, duplicate and strand nothing."""
    report = report_of(database_url, tmp_path)

    assert len(report.trials) == 3
    assert report.trials[-1].acknowledged > 0
    assert report.trials[-1].polled > 0
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.undelivered == 0
    assert sum(len(t.stranded) for t in report.trials) == 0
