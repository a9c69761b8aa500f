"""Checks that syncd can create or open each file that the configuration names.

The store runs the database check whenever it opens SQLite, so each command
that opens the database exits 78 on such a problem. ``syncd check-config``
also checks the file of each jsonl sink.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.systemd import STATE_DIRECTORY

if TYPE_CHECKING:
    from syncd.config import Config

_CREATE_HINT = "create it (under systemd, StateDirectory=syncd creates {state})"


def file_location_problem(
    key: str, path: str, file_name: str, prefix: str = ""
) -> str | None:
    """Return why no file can be created or opened at ``path``, or None.

    ``key`` names the setting in the message. The suggested fix is written as
    ``prefix`` plus a path, with ``file_name`` for a file in a directory.
    Permissions are not checked, because the service may run as another user.
    NOTE: a directory that this user may not search is reported as missing.
    """
    target = Path(path)
    if os.path.isdir(target):
        example = f"{prefix}{target / file_name}"
        return f"{key}: {path} is a directory; name a file in it, such as {example}"
    directory = target.parent
    if os.path.isdir(directory):
        return None
    blocker = _nearest_existing(directory)
    if blocker is not None and not os.path.isdir(blocker):
        example = f"{prefix}{blocker.parent / target.name}"
        return (
            f"{key}: {blocker} is a file, not a directory, so it cannot contain "
            f"{path}; name a file in a directory, such as {example}"
        )
    if path.startswith("~"):
        return (
            f"{key}: {path} starts with '~', which syncd does not expand to a "
            "home directory; write the absolute path, such as "
            f"{prefix}{os.path.expanduser(path)}"
        )
    hint = _CREATE_HINT.format(state=STATE_DIRECTORY)
    return (
        f"{key}: directory {str(directory)!r} does not exist; {hint} or change the path"
    )


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every database


def database_location_problem(path: str) -> str | None:
    """Return why the SQLite database file cannot be at ``path``, or None."""
    problem = file_location_problem("daemon.database", path, "syncd.db", "sqlite:///")
    if problem is not None or not os.path.lexists(path):
        return problem
    fix = "point daemon.database at syncd's database file or at a new path"
    if not os.path.exists(path):
        return f"daemon.database: {path} is a symbolic link to nothing; {fix}"
    if not os.path.isfile(path):
        return f"daemon.database: {path} is not a regular file; {fix}"
    try:
        with open(path, "rb") as database:
            header = database.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"daemon.database: cannot read {path} ({exc.strerror}); {fix}"
    if header and header != SQLITE_HEADER:
        return f"daemon.database: {path} is not an SQLite database; {fix}"
    return None


def configured_file_problems(config: Config) -> tuple[list[str], list[str]]:
    """Return the problems and the warnings about the files that syncd run opens.

    These are the SQLite database and the file of each jsonl sink. A missing
    STATE_DIRECTORY is only a warning, because systemd creates it when the
    unit from ``syncd systemd-unit`` starts.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for key, path, check in _configured_files(config):
        if _in_missing_state_directory(path):
            warnings.append(
                f"{key}: directory {STATE_DIRECTORY!r} does not exist yet; "
                "StateDirectory=syncd creates it when the service starts. Create "
                "it yourself to run syncd outside systemd"
            )
            continue
        problem = check(path)
        if problem is not None:
            problems.append(problem)
    return problems, warnings


def _configured_files(
    config: Config,
) -> list[tuple[str, str, Callable[[str], str | None]]]:
    """Return (key, path, check) of each file, the check giving its problem."""
    files: list[tuple[str, str, Callable[[str], str | None]]] = []
    if config.daemon.sqlite_path is not None:
        files.append(
            ("daemon.database", config.daemon.sqlite_path, database_location_problem)
        )
    for name, sink in config.sinks.items():
        if sink.kind == "jsonl":
            key = f"sinks.{name}.path"
            check = functools.partial(
                file_location_problem, key, file_name="events.jsonl"
            )
            files.append((key, sink.path, check))
    return files


def _in_missing_state_directory(path: str) -> bool:
    directory = os.path.dirname(os.path.abspath(path))
    return directory == STATE_DIRECTORY and not os.path.exists(directory)


def _nearest_existing(directory: Path) -> Path | None:
    """Return ``directory`` or its closest ancestor that exists."""
    for candidate in (directory, *directory.parents):
        if os.path.exists(candidate):
            return candidate
    return None
