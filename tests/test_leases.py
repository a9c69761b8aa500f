"""Tests of releasing the delivery leases of processes that died."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from syncd.leases import release_dead_leases
from syncd.models import Delivery


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _add(store, owner: str, sink: str = "archive") -> int:
    now = datetime.now(UTC)
    with store.session() as session:
        row = Delivery(
            event_offset=1,
            sink=sink,
            created_at=now,
            next_attempt_at=now,
            lease_owner=owner,
            lease_until=now + timedelta(minutes=5),
        )
        session.add(row)
        session.flush()
        return row.id


def _owner(store, row_id: int) -> str | None:
    with store.session() as session:
        query = select(Delivery.lease_owner).where(Delivery.id == row_id)
        return session.execute(query).scalar_one()


def test_dead_local_owner_released(store):
    """A lease held by a dead pid of this host is released."""
    row = _add(store, f"{socket.gethostname()}:{_dead_pid()}:abc")
    assert release_dead_leases(store, "archive") == 1
    assert _owner(store, row) is None


def test_live_owner_kept(store):
    """A lease held by a running process of this host is kept."""
    owner = f"{socket.gethostname()}:1:abc"
    row = _add(store, owner)
    assert release_dead_leases(store, "archive") == 0
    assert _owner(store, row) == owner


def test_other_host_kept(store):
    """A lease held on another host is kept, dead pid or not."""
    owner = f"not-{socket.gethostname()}:{_dead_pid()}:abc"
    row = _add(store, owner)
    assert release_dead_leases(store, "archive") == 0
    assert _owner(store, row) == owner


def test_other_sink_kept(store):
    """Only the named sink's rows are released."""
    owner = f"{socket.gethostname()}:{_dead_pid()}:abc"
    row = _add(store, owner, sink="other")
    assert release_dead_leases(store, "archive") == 0
    assert _owner(store, row) == owner
