"""Tests of the systemd unit, sd_notify and socket activation helpers."""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd import systemd
from syncd.cli import main


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _unit(*args: str) -> str:
    result = CliRunner().invoke(main, ["systemd-unit", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_unit_parses_with_keys():
    """The printed unit is INI with the service and hardening keys."""
    service = _parse(_unit("--executable", "/opt/syncd/bin/syncd"))["Service"]
    expected = {
        "Type": "notify",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "78",
        "DynamicUser": "yes",
        "StateDirectory": "syncd",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ExecStart": "/opt/syncd/bin/syncd run -c /etc/syncd/config.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key


def test_unit_sections():
    """The unit has the Unit, Service and Install sections."""
    parser = _parse(_unit("--executable", "/usr/bin/syncd"))
    assert parser.sections() == ["Unit", "Service", "Install"]


def test_unit_system_call_filter():
    """The unit allows the @system-service system call set."""
    lines = _unit("--executable", "/usr/bin/syncd").splitlines()
    assert "SystemCallFilter=@system-service" in lines


def test_unit_with_user():
    """--user replaces DynamicUser with User and Group."""
    service = _parse(_unit("--executable", "/usr/bin/syncd", "--user", "syncd"))[
        "Service"
    ]
    assert service.get("User") == "syncd"
    assert service.get("Group") == "syncd"
    assert "DynamicUser" not in service


def test_unit_credentials_from_config(tmp_path: Path):
    """Each credential named in the configuration gets a LoadCredential line."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[providers.payments]\nconnector = "stripe"\n'
        'api_token = { credential = "stripe-api-key" }\n'
        'webhook_secret = { credential = "stripe-webhook-secret" }\n',
        encoding="utf-8",
    )
    text = _unit(
        "--executable",
        "/usr/bin/syncd",
        "--config-path",
        str(config),
        "--credential",
        "extra=/srv/extra",
    )
    loads = [line for line in text.splitlines() if line.startswith("LoadCredential=")]
    assert loads == [
        "LoadCredential=extra:/srv/extra",
        "LoadCredential=stripe-api-key:/etc/syncd/credentials/stripe-api-key",
        "LoadCredential=stripe-webhook-secret:"
        "/etc/syncd/credentials/stripe-webhook-secret",
    ]


def _unit_for_config(tmp_path: Path, text: str) -> tuple[str, str]:
    """Print the unit for a configuration file and return its stdout and stderr."""
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    args = ["--executable", "/usr/bin/syncd", "--config-path", str(config)]
    result = CliRunner().invoke(main, ["systemd-unit", *args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_unit_warns_database_outside_state_directory(tmp_path: Path):
    """A SQLite database outside /var/lib/syncd is named in a warning with the fix."""
    stdout, stderr = _unit_for_config(
        tmp_path, '[daemon]\ndatabase = "sqlite:////srv/syncd/syncd.db"\n'
    )

    assert "warning: daemon.database: /srv/syncd/syncd.db is outside" in stderr
    assert "/var/lib/syncd" in stderr
    assert "ReadWritePaths=/srv/syncd" in stderr
    assert "warning" not in stdout
    assert _parse(stdout)["Service"].get("ProtectSystem") == "strict"


def test_unit_warns_jsonl_sink_outside_state_directory(tmp_path: Path):
    """A jsonl sink writing outside /var/lib/syncd is named in a warning."""
    _, stderr = _unit_for_config(
        tmp_path,
        '[sinks.archive]\nkind = "jsonl"\npath = "/srv/export/events.jsonl"\n',
    )

    assert "warning: sinks.archive.path: /srv/export/events.jsonl" in stderr
    assert "ReadWritePaths=/srv/export" in stderr


def test_unit_warns_path_leaving_state_directory(tmp_path: Path):
    """A path that leaves /var/lib/syncd through '..' is outside it."""
    _, stderr = _unit_for_config(
        tmp_path, '[daemon]\ndatabase = "sqlite:////var/lib/syncd/../db/x.db"\n'
    )

    assert "warning: daemon.database: /var/lib/db/x.db is outside" in stderr


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[daemon]\ndatabase = "sqlite:////var/lib/syncd/syncd.db"\n',
        '[daemon]\ndatabase = "sqlite:///relative.db"\n',
        '[daemon]\ndatabase = "postgresql://syncd@127.0.0.1/syncd"\n',
        '[sinks.archive]\nkind = "jsonl"\npath = "exports/events.jsonl"\n',
        '[sinks.archive]\nkind = "jsonl"\npath = "/var/lib/syncd/events.jsonl"\n',
        "not TOML [",
    ],
    ids=["default", "inside", "relative", "postgresql", "sink-relative", "sink", "bad"],
)
def test_unit_no_warning_inside_state_directory(tmp_path: Path, text: str):
    """Paths under /var/lib/syncd, relative paths and PostgreSQL give no warning."""
    _, stderr = _unit_for_config(tmp_path, text)

    assert stderr == ""


def test_unit_rejects_relative_executable():
    """A relative --executable is rejected with exit code 2."""
    result = CliRunner().invoke(main, ["systemd-unit", "--executable", "syncd"])
    assert result.exit_code == 2
    assert "absolute path" in result.output


def test_unit_rejects_bad_credential():
    """A --credential without NAME=/path is rejected."""
    result = CliRunner().invoke(
        main, ["systemd-unit", "--executable", "/x", "--credential", "nopath"]
    )
    assert result.exit_code == 2
    assert "NAME=/absolute/path" in result.output


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Bind a datagram socket and point NOTIFY_SOCKET at it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_datagram(receiver: socket.socket):
    """notify() sends its lines as one datagram."""
    assert systemd.notify("READY=1", "STATUS=up")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch):
    """A NOTIFY_SOCKET starting with @ names an abstract socket."""
    name = f"syncd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_socket(monkeypatch: pytest.MonkeyPatch):
    """notify() returns False outside systemd."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")


def test_notify_missing_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """notify() to a socket that does not exist returns False."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert not systemd.notify("READY=1")


def test_status_line_one_line():
    """status_line() folds newlines so STATUS= stays one line."""
    assert systemd.status_line("a\nb  c") == "STATUS=a b c"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("4000000", None, 2.0),
        ("0", None, None),
        (None, None, None),
        ("abc", None, None),
        ("4000000", "1", None),
        ("4000000", "self", 2.0),
    ],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    """watchdog_interval() is half WATCHDOG_USEC, for this process only."""
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert systemd.watchdog_interval() == expected


def test_watchdog_pings_until_a_part_dies(receiver: socket.socket, caplog):
    """The pings end, with one ERROR line, once dead_part names a part."""
    answers = iter([None, None, "the thread that commits webhooks"])
    asyncio.run(systemd.ping_watchdog(0.01, lambda: next(answers)))

    pings = [receiver.recv(4096) for _ in range(2)]
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(4096)
    assert pings == [b"WATCHDOG=1", b"WATCHDOG=1"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "the thread that commits webhooks has stopped" in errors[0].getMessage()


def test_listen_sockets_other_pid(monkeypatch: pytest.MonkeyPatch):
    """Sockets meant for another process are not taken."""
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_sockets() == []


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_unit_passes_systemd_analyze(tmp_path: Path):
    """systemd-analyze verify accepts the unit without a message."""
    unit = tmp_path / "syncd.service"
    unit.write_text(_unit("--executable", "/bin/true"), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr == ""
