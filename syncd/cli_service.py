"""The ``syncd systemd-unit`` command: print a hardened systemd service unit."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from syncd import systemd

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
