"""systemd integration without libsystemd: sd_notify, socket activation, the unit.

The notification protocol sends ``KEY=VALUE`` lines as one datagram to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``. A name starting with ``@`` is in
the abstract namespace. Socket activation passes listening sockets from fd 3
on, with their count in ``$LISTEN_FDS`` and the receiving pid in
``$LISTEN_PID``. Both protocols are described in sd_notify(3) and
sd_listen_fds(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.config import Config

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START in sd-daemon.h
WATCHDOG_SEC = 30  # WatchdogSec= of the generated unit, in seconds
# Created by StateDirectory=syncd. It is the unit's working directory and the
# only one where ProtectSystem=strict lets syncd write files that persist.
STATE_DIRECTORY = "/var/lib/syncd"


def notify(*lines: str) -> bool:
    """Send ``KEY=VALUE`` lines to systemd; return False when not under systemd.

    A failed send is logged and otherwise ignored, because a missing
    notification must not stop the daemon.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address.lstrip("\0"), exc)
        return False
    return True


def status_line(text: str) -> str:
    """Return a ``STATUS=`` line, with newlines replaced so it stays one line."""
    return "STATUS=" + " ".join(text.split())


def watchdog_interval() -> float | None:
    """Return the seconds between watchdog pings: half of ``$WATCHDOG_USEC``.

    Returns None when the watchdog is off, or when ``$WATCHDOG_PID`` names
    another process.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def ping_watchdog(
    interval: float, dead_part: Callable[[], str | None] = lambda: None
) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds until cancelled.

    It runs as a task on the server's event loop, so a blocked loop stops
    the pings and systemd restarts the service after WatchdogSec. The pings
    also stop for good once ``dead_part`` names a part of the daemon that
    has ended, such as the thread that commits webhooks.
    """
    while True:
        part = dead_part()
        if part is not None:
            log.error(
                "%s has stopped; watchdog pings end so that systemd restarts syncd",
                part,
            )
            return
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def listen_sockets() -> list[socket.socket]:
    """Return the sockets that systemd passed to this process, if any.

    The ``LISTEN_*`` variables are removed afterwards so that child processes
    (command sinks) do not take the sockets as their own.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not pid or not count or pid != str(os.getpid()) or not count.isdigit():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def credential_names(config_path: str) -> list[str]:
    """Return the ``{ credential = "NAME" }`` names used in a configuration file.

    A file that is missing or not valid TOML yields no names, so that a unit
    can be written before the configuration exists.
    """
    try:
        data = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return sorted(set(_find_credentials(data)))


def _find_credentials(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        name = value.get("credential")
        if isinstance(name, str) and len(value) == 1:
            yield name
        for item in value.values():
            yield from _find_credentials(item)
    elif isinstance(value, list):
        for item in value:
            yield from _find_credentials(item)


def paths_outside_state_directory(config: Config) -> dict[str, str]:
    """Return each file that syncd writes outside STATE_DIRECTORY, by its key.

    These are the SQLite database and the file of each jsonl sink. Relative
    paths resolve against the unit's working directory, STATE_DIRECTORY.
    Command sinks are left out, because their programs may write anywhere.
    """
    written = {"daemon.database": config.daemon.sqlite_path}
    for name, sink in config.sinks.items():
        if sink.kind == "jsonl":
            written[f"sinks.{name}.path"] = sink.path
    outside = {}
    for key, path in written.items():
        if path is None:
            continue
        absolute = os.path.normpath(os.path.join(STATE_DIRECTORY, path))
        if not Path(absolute).is_relative_to(STATE_DIRECTORY):
            outside[key] = absolute
    return outside


def render_unit(
    executable: str,
    config_path: str,
    *,
    user: str | None = None,
    credentials: dict[str, str] | None = None,
    stop_timeout: int = 45,
) -> str:
    """Return a hardened ``syncd.service`` unit file.

    Without ``user`` the unit uses DynamicUser=yes. ``credentials`` maps each
    credential name to the file that LoadCredential= reads it from.
    """
    identity = [f"User={user}", f"Group={user}"] if user else ["DynamicUser=yes"]
    loads = [
        f"LoadCredential={name}:{path}"
        for name, path in sorted((credentials or {}).items())
    ]
    service = [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={executable} run -c {config_path}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "Restart=on-failure",
        "RestartSec=5s",
        "RestartPreventExitStatus=78",
        f"TimeoutStopSec={stop_timeout}s",
        *identity,
        "StateDirectory=syncd",
        "StateDirectoryMode=0700",
        f"WorkingDirectory={STATE_DIRECTORY}",
        *loads,
        "UMask=0077",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
    ]
    sections = [
        "[Unit]",
        "Description=syncd provider event log",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(sections) + "\n"
