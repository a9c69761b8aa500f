"""The ``syncd systemd-unit`` command: print a hardened systemd service unit."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from syncd import config as config_module
from syncd import systemd
from syncd.errors import ConfigError

DEFAULT_CONFIG = "/etc/syncd/config.toml"
CREDENTIALS_DIR = "/etc/syncd/credentials"


def _default_executable() -> str:
    beside_python = Path(sys.executable).parent / "syncd"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("syncd") or "/usr/local/bin/syncd"


def _parse_credential(value: str) -> tuple[str, str]:
    name, separator, path = value.partition("=")
    if not separator or not name or not path.startswith("/"):
        raise click.BadParameter(
            f"invalid credential {value!r}: write NAME=/absolute/path",
            param_hint="--credential",
        )
    return name, path


@click.command("systemd-unit")
@click.option(
    "--executable",
    metavar="PATH",
    default=None,
    help="Absolute path of the syncd program "
    "[default: the syncd beside this Python, then the one on PATH].",
)
@click.option(
    "--config-path",
    metavar="PATH",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Configuration file that the service reads.",
)
@click.option(
    "--user",
    metavar="NAME",
    default=None,
    help="Run as this existing system user [default: DynamicUser=yes].",
)
@click.option(
    "--credential",
    "credentials",
    multiple=True,
    metavar="NAME=PATH",
    help="Add LoadCredential=NAME:PATH (repeatable). Credentials named in the "
    f"configuration file are added from {CREDENTIALS_DIR}/NAME.",
)
def systemd_unit(
    executable: str | None,
    config_path: str,
    user: str | None,
    credentials: tuple[str, ...],
) -> None:
    """Print a hardened systemd unit for syncd run on standard output.

    Save it as /etc/systemd/system/syncd.service, then run
    'systemctl daemon-reload' and 'systemctl enable --now syncd'.

    The unit lets syncd write only under /var/lib/syncd. A SQLite database or
    jsonl sink file elsewhere in the configuration gets a warning on standard
    error that names the ReadWritePaths= line it needs.
    """
    program = executable or _default_executable()
    if not program.startswith("/"):
        raise click.BadParameter(
            f"{program!r} is not an absolute path", param_hint="--executable"
        )
    loads = {
        name: f"{CREDENTIALS_DIR}/{name}"
        for name in systemd.credential_names(config_path)
    }
    loads.update(_parse_credential(value) for value in credentials)
    click.echo(
        systemd.render_unit(program, config_path, user=user, credentials=loads),
        nl=False,
    )
    _warn_paths_outside_state_directory(config_path, user)


def _warn_paths_outside_state_directory(config_path: str, user: str | None) -> None:
    """Warn on stderr about each file that the unit would not let syncd write.

    A missing or invalid configuration is skipped, because a unit may be
    written before the file, and check-config lists its problems.
    """
    try:
        config = config_module.load(config_path, require_secrets=False)
    except ConfigError:
        return
    for key, path in systemd.paths_outside_state_directory(config).items():
        click.echo(f"warning: {key}: {_outside_state_message(path, user)}", err=True)


def _outside_state_message(path: str, user: str | None) -> str:
    state = systemd.STATE_DIRECTORY
    directory = os.path.dirname(path)
    owner = "the service's user"
    if user is None:
        owner += " (use --user NAME, because DynamicUser=yes gives no fixed user ID)"
    return (
        f"{path} is outside {state}, the only directory where this unit lets "
        "syncd keep files (ProtectSystem=strict makes the rest read-only). "
        f"Move it under {state}, or add ReadWritePaths={directory} to the "
        f"[Service] section and make {directory} writable by {owner}"
    )
