"""Hand back the delivery leases of sink workers whose process has died.

A worker's lease owner is ``host:pid:random``. After a SIGKILL its claimed
rows stay leased until ``lease_until`` (5 minutes or more), and with
per-resource ordering they hold back every later event of the same
resources. A worker that starts on the same host releases the leases of
owners whose pid no longer runs, so delivery resumes at once.
"""

from __future__ import annotations

import logging
import os
import socket

from sqlalchemy import select, update

from syncd.models import Delivery
from syncd.store import Store

log = logging.getLogger(__name__)


def pid_running(pid: int) -> bool:
    """Return True when a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    return True


def release_dead_leases(store: Store, sink: str) -> int:
    """Release the leases on ``sink`` rows held by dead processes of this host.

    Owners on other hosts are left alone, since their liveness is unknown
    here; their leases still expire. Returns the number of rows released.
    NOTE: a dead owner whose pid was reused by a new process keeps its lease
    until it expires, which only delays delivery.
    """
    prefix = f"{socket.gethostname()}:"
    with store.session() as session:
        owners = session.execute(
            select(Delivery.lease_owner)
            .where(Delivery.sink == sink, Delivery.lease_owner.is_not(None))
            .distinct()
        ).scalars()
        dead = [
            owner
            for owner in owners
            if owner.startswith(prefix) and not _owner_alive(owner, prefix)
        ]
        released = 0
        for owner in dead:
            result = session.execute(
                update(Delivery)
                .where(Delivery.sink == sink, Delivery.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
            released += result.rowcount
    if released:
        log.info(
            "sink %s: released %d delivery leases of stopped processes %s",
            sink,
            released,
            ", ".join(dead),
        )
    return released


def _owner_alive(owner: str, prefix: str) -> bool:
    pid = owner.removeprefix(prefix).partition(":")[0]
    if not pid.isdigit():
        return True  # not an owner this module can judge
    return int(pid) == os.getpid() or pid_running(int(pid))
