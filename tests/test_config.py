"""Tests of configuration loading, ``syncd check-config`` and unit parsing."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from syncd import config as config_module
from syncd import file_checks, units
from syncd.cli import main
from syncd.config import Config
from syncd.errors import EXIT_CONFIG, ConfigError
from syncd.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
STRIPE = '[providers.p]\nconnector = "stripe"\n'
# A Stripe table that loads without problems.
STRIPE_WITH_TOKEN = STRIPE + 'api_token = "sk_test_1"\n'
# GitHub and Shopify tables that load without problems.
GITHUB = '[providers.p]\nconnector = "github"\nrepositories = ["octo-org/octo-repo"]\n'
SHOPIFY = (
    '[providers.p]\nconnector = "shopify"\napi_token = "shpat_1"\n'
    'api_base_url = "https://example-shop.myshopify.com"\napi_version = "2024-04"\n'
)
NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)

# Variables of the outer environment that would change what a test loads.
CLEAN_ENV: dict[str, str | None] = {
    "STRIPE_API_KEY": None,
    "STRIPE_WEBHOOK_SECRET": None,
    "CREDENTIALS_DIRECTORY": None,
    "SYNCD_CONFIG": None,
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the root logger set-up that every ``syncd`` invocation does."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def check_config(path: Path, **env: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main, ["check-config", "-c", str(path)], env={**CLEAN_ENV, **env}
    )


def listed_problems(result: Result) -> list[str]:
    """Return the problems ``check-config`` printed, one per ``  - `` line."""
    prefix = "  - "
    return [
        line.removeprefix(prefix)
        for line in result.stderr.splitlines()
        if line.startswith(prefix)
    ]


def find_problem(problems: list[str], path: str) -> str:
    """Return the one problem reported for the key ``path``."""
    matches = [problem for problem in problems if problem.startswith(f"{path}: ")]
    assert len(matches) == 1, f"{path} in {problems}"
    return matches[0]


def load_problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_module.load(path, environ=environ or {})
    return caught.value.problems


# The example configuration


def test_example_config_valid() -> None:
    """config.example.toml passes check-config once its two secrets are set."""
    result = check_config(
        REPO_ROOT / "config.example.toml",
        STRIPE_API_KEY="sk_test_example",
        STRIPE_WEBHOOK_SECRET="whsec_example",
    )

    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    assert "payments (stripe, webhooks+reconcile)" in result.stdout


def test_example_config_missing_secrets() -> None:
    """Without its secrets, config.example.toml fails naming both variables."""
    result = check_config(REPO_ROOT / "config.example.toml")

    problems = listed_problems(result)
    assert result.exit_code == EXIT_CONFIG
    assert "STRIPE_API_KEY" in find_problem(problems, "providers.payments.api_token")
    webhook_problem = find_problem(problems, "providers.payments.webhook_secret")
    assert "STRIPE_WEBHOOK_SECRET" in webhook_problem


# One problem at a time

PROBLEM_CASES = [
    pytest.param(
        STRIPE + 'api_token = { env = "" }\n', "providers.p.api_token",
        "env is empty", id="empty-env-name",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'webhook_secret = { credential = "../../etc/passwd" }\n',
        "providers.p.webhook_secret", "invalid credential name",
        id="credential-with-slash",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + '\n[sinks.app]\nkind = "jsonl"\npath = "/tmp/x.jsonl"\n'
        'types = [""]\n',
        "sinks.app.types", "an empty pattern matches no event type",
        id="sink-empty-type",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'signature_tolerance = "0s"\n',
        "providers.p.signature_tolerance", "would reject every webhook",
        id="zero-tolerance",
    ),
    pytest.param(
        '[daemon]\ncolour = "blue"\n', "daemon.colour", "unknown key",
        id="unknown-daemon-key",
    ),
    pytest.param(
        STRIPE + "bogus_key = 1\n", "providers.p.bogus_key", "unknown key",
        id="unknown-provider-key",
    ),
    pytest.param(
        STRIPE + 'poll_interval = "5x"\n', "providers.p.poll_interval",
        "invalid duration '5x'", id="bad-duration",
    ),
    pytest.param(
        STRIPE + 'poll_interval = ["1m"]\n', "providers.p.poll_interval",
        "invalid duration", id="duration-list",
    ),
    pytest.param(
        STRIPE + "poll_interval = inf\n", "providers.p.poll_interval",
        "invalid duration", id="duration-infinite",
    ),
    pytest.param(
        STRIPE + 'reconcile_window = "99999999999d"\n', "providers.p.reconcile_window",
        "invalid duration", id="duration-too-long",
    ),
    pytest.param(
        '[daemon]\nmax_body = "5x"\n', "daemon.max_body", "invalid size '5x'",
        id="bad-size",
    ),
    pytest.param(
        "[daemon]\nmax_body = 1.5\n", "daemon.max_body", "invalid size",
        id="size-float",
    ),
    pytest.param(
        STRIPE + 'max_retry_wait = "0s"\n', "providers.p.max_retry_wait",
        "retries would not wait at all", id="zero-max-retry-wait",
    ),
    pytest.param(
        '[daemon]\ndatabase = "mysql://127.0.0.1/syncd"\n', "daemon.database",
        "unsupported database URL", id="bad-database",
    ),
    pytest.param(
        '[daemon]\ndatabase = "sqlite://"\n', "daemon.database",
        "'sqlite://' is an in-memory SQLite database", id="memory-database",
    ),
    pytest.param(
        '[daemon]\ndatabase = "sqlite:///:memory:"\n', "daemon.database",
        "name a file, such as 'sqlite:////var/lib/syncd/syncd.db'",
        id="memory-database-named",
    ),
    pytest.param(
        '[daemon]\ndatabase = "sqlite:///file:x?mode=memory&uri=true"\n',
        "daemon.database", "in-memory SQLite database", id="memory-database-uri",
    ),
    pytest.param(
        '[daemon]\nlisten = "8787"\n', "daemon.listen", "invalid listen address",
        id="bad-listen",
    ),
    pytest.param(
        '[providers.p]\nconnector = "nosuch"\n', "providers.p.connector",
        "unknown connector 'nosuch'", id="unknown-connector",
    ),
    pytest.param(
        '[providers.p]\npoll_interval = "1m"\n', "providers.p.connector",
        "required key is missing", id="missing-connector",
    ),
    pytest.param(
        STRIPE + 'api_base_url = "api.stripe.com"\n', "providers.p.api_base_url",
        "invalid URL 'api.stripe.com'", id="url-without-scheme",
    ),
    pytest.param(
        '[providers.Payments]\nconnector = "stripe"\n', "providers.Payments",
        "invalid provider name 'Payments'", id="invalid-provider-name",
    ),
    pytest.param(
        STRIPE + 'api_token = { env = "SYNCD_TEST_UNSET_TOKEN" }\n',
        "providers.p.api_token",
        "environment variable SYNCD_TEST_UNSET_TOKEN is not set",
        id="missing-env-secret",
    ),
    pytest.param(
        STRIPE + 'webhook_secret = { file = "missing.txt" }\n',
        "providers.p.webhook_secret", "cannot read secret file",
        id="missing-secret-file",
    ),
    pytest.param(
        STRIPE + 'webhook_secret = { file = "." }\n',
        "providers.p.webhook_secret", "cannot read secret file",
        id="unreadable-secret-file",
    ),
    pytest.param(
        STRIPE + 'api_token = { credential = "stripe-token" }\n',
        "providers.p.api_token", "needs $CREDENTIALS_DIRECTORY",
        id="credential-without-directory",
    ),
    pytest.param(
        STRIPE + 'api_token = { env = "A", file = "b" }\n', "providers.p.api_token",
        "exactly one of env, file or credential", id="two-secret-sources",
    ),
    pytest.param(
        STRIPE + 'start_from = "2024-05-01T00:00:00"\n', "providers.p.start_from",
        "no UTC offset", id="start-from-without-offset",
    ),
    pytest.param(
        STRIPE + "start_from = 2024-05-01T00:00:00\n", "providers.p.start_from",
        "no UTC offset", id="start-from-toml-local-time",
    ),
    pytest.param(
        STRIPE + "start_from = 5\n", "providers.p.start_from", "invalid time",
        id="start-from-integer",
    ),
    pytest.param(
        STRIPE + 'lookback = "30s"\n', "providers.p.lookback", "use at least '60s'",
        id="short-lookback",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'request_timeout = "0s"\n',
        "providers.p.request_timeout",
        "0s is too short for an API request",
        id="zero-request-timeout",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'request_timeout = "500ms"\n',
        "providers.p.request_timeout",
        "use at least '1s' (the default is '30s')",
        id="short-request-timeout",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'reconcile_window = "0s"\n',
        "providers.p.reconcile_window",
        "a zero window looks back no time at all; use at least '1s'",
        id="zero-reconcile-window",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + "page_size = 1000\n",
        "providers.p.page_size",
        "page_size 1000 is above the stripe connector's maximum of 100; "
        "use at most 100",
        id="stripe-page-size-above-maximum",
    ),
    pytest.param(
        GITHUB + "page_size = 101\n",
        "providers.p.page_size",
        "above the github connector's maximum of 100",
        id="github-page-size-above-maximum",
    ),
    pytest.param(
        SHOPIFY + "page_size = 251\n",
        "providers.p.page_size",
        "above the shopify connector's maximum of 250; use at most 250",
        id="shopify-page-size-above-maximum",
    ),
    pytest.param(
        GITHUB.replace("repositories", "repository") + "page_size = 500\n",
        "providers.p.page_size",
        "above the github connector's maximum of 100",
        id="page-size-with-invalid-options",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + 'poll_interval = "5x"\npage_size = 1000\n',
        "providers.p.page_size",
        "above the stripe connector's maximum of 100",
        id="page-size-with-invalid-common-key",
    ),
    pytest.param(
        STRIPE_WITH_TOKEN + "page_size = 5000\n",
        "providers.p.page_size",
        "less than or equal to 1000",
        id="page-size-above-any-maximum",
    ),
]


@pytest.mark.parametrize(("text", "path", "fragment"), PROBLEM_CASES)
def test_check_config_problem(
    tmp_path: Path, text: str, path: str, fragment: str
) -> None:
    """check-config exits 78 and names the key and the fault of one problem."""
    result = check_config(write_config(tmp_path, text))

    assert result.exit_code == EXIT_CONFIG, result.output
    assert fragment in find_problem(listed_problems(result), path)


@pytest.mark.parametrize(
    ("text", "page_size"),
    [
        pytest.param(STRIPE_WITH_TOKEN + "page_size = 100\n", 100, id="stripe"),
        pytest.param(GITHUB + "page_size = 100\n", 100, id="github"),
        pytest.param(SHOPIFY + "page_size = 250\n", 250, id="shopify"),
    ],
)
def test_page_size_at_maximum_valid(tmp_path: Path, text: str, page_size: int) -> None:
    """A page_size equal to the connector's maximum loads unchanged."""
    config = config_module.load(write_config(tmp_path, text), environ={})

    assert config.providers["p"].page_size == page_size


def test_page_size_without_maximum_valid(tmp_path: Path) -> None:
    """The rest connector has no maximum of its own, so page_size 1000 loads."""
    text = (
        '[providers.p]\nconnector = "rest"\n'
        'api_base_url = "https://api.tickets.example"\npath = "/v2/tickets"\n'
        'id_field = "id"\ntime_field = "updated_at"\npage_size = 1000\n'
        'cursor = { kind = "token" }\npagination = { kind = "link" }\n'
    )
    config = config_module.load(write_config(tmp_path, text), environ={})

    assert config.providers["p"].page_size == 1000


@pytest.mark.parametrize("port", ["65536", "99999"])
def test_listen_port_out_of_range(tmp_path: Path, port: str) -> None:
    """A listen port above 65535 is named with the valid range."""
    text = f'[daemon]\nlisten = "127.0.0.1:{port}"\n'

    result = check_config(write_config(tmp_path, text))

    problem = find_problem(listed_problems(result), "daemon.listen")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"port {port} is out of range 1 to 65535" in problem


def test_listen_port_zero_valid() -> None:
    """Port 0 is accepted: the system picks a free port."""
    config = config_module.parse({"daemon": {"listen": "127.0.0.1:0"}})

    assert config.daemon.port == 0


@pytest.mark.parametrize("command", ['"/bin/true"', '["/bin/true", 1]'])
def test_command_sink_needs_string_list(tmp_path: Path, command: str) -> None:
    """A command sink's command that is not a list of strings shows the form."""
    text = f'[sinks.run]\nkind = "command"\ncommand = {command}\n'

    result = check_config(write_config(tmp_path, text))

    problem = find_problem(listed_problems(result), "sinks.run.command")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "must be a list of strings" in problem
    assert 'command = ["/usr/local/bin/handler", "--flag"]' in problem


@pytest.mark.parametrize("value", ['"yesterday"', "5", '"Now"'])
def test_start_from_names_every_form(tmp_path: Path, value: str) -> None:
    """An invalid start_from names 'now', an ISO 8601 time and a duration."""
    result = check_config(write_config(tmp_path, STRIPE + f"start_from = {value}\n"))

    problem = find_problem(listed_problems(result), "providers.p.start_from")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "'now'" in problem
    assert "ISO 8601 time with an offset" in problem
    assert "a duration ago such as '7d'" in problem


# Every problem at once

ALL_PROBLEMS = """
[daemon]
colour = "blue"
max_body = "5x"

[providers.p]
connector = "stripe"
bogus_key = 1
poll_interval = "5x"
api_base_url = "api.stripe.com"
api_token = { env = "SYNCD_TEST_UNSET_TOKEN" }
webhook_secret = { file = "missing.txt" }
start_from = "2024-05-01T00:00:00"
lookback = "30s"

[providers.q]
connector = "nosuch"
api_token = { credential = "stripe-token" }

[providers.Bad]
connector = "stripe"
"""

ALL_PROBLEM_PATHS = [
    "daemon.colour",
    "daemon.max_body",
    "providers.p.bogus_key",
    "providers.p.poll_interval",
    "providers.p.api_base_url",
    "providers.p.api_token",
    "providers.p.webhook_secret",
    "providers.p.start_from",
    "providers.p.lookback",
    "providers.q.connector",
    "providers.q.api_token",
    "providers.Bad",
]


def test_check_config_warns_missing_token(tmp_path: Path) -> None:
    """A Stripe table without api_token is valid, with a warning naming it."""
    result = check_config(write_config(tmp_path, STRIPE))

    assert result.exit_code == 0
    assert "warning: providers.p.api_token: missing" in result.stderr
    assert "fails with 401" in result.stderr


def test_check_config_warns_no_providers(tmp_path: Path) -> None:
    """A file with no provider is valid, with a warning that nothing runs."""
    result = check_config(write_config(tmp_path, "[daemon]\n"))

    assert result.exit_code == 0
    assert "warning: no [providers.NAME] table" in result.stderr


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    """check-config lists each problem of a file in one run, with its key path."""
    result = check_config(write_config(tmp_path, ALL_PROBLEMS))

    problems = listed_problems(result)
    assert result.exit_code == EXIT_CONFIG
    for path in ALL_PROBLEM_PATHS:
        find_problem(problems, path)
    assert len(problems) == len(ALL_PROBLEM_PATHS)


def test_load_lists_every_problem(tmp_path: Path) -> None:
    """config.load raises one ConfigError carrying every problem."""
    problems = load_problems(write_config(tmp_path, ALL_PROBLEMS))

    for path in ALL_PROBLEM_PATHS:
        find_problem(problems, path)


def test_check_config_missing_file(tmp_path: Path) -> None:
    """A missing configuration file exits 78 and names the -c option."""
    result = check_config(tmp_path / "absent.toml")

    assert result.exit_code == EXIT_CONFIG
    assert "file not found" in result.stderr
    assert "-c PATH" in result.stderr


def test_check_config_invalid_toml(tmp_path: Path) -> None:
    """A file that is not TOML exits 78 with the parser's message."""
    result = check_config(write_config(tmp_path, "[daemon\n"))

    assert result.exit_code == EXIT_CONFIG
    assert "invalid TOML" in result.stderr


# Files that syncd run opens


def write_file_config(
    directory: Path, database: Path, jsonl: Path | None = None
) -> Path:
    """Write a configuration with ``database`` and, if given, a jsonl sink file."""
    text = f'[daemon]\ndatabase = "sqlite:///{database}"\n'
    if jsonl is not None:
        text += f'\n[sinks.log]\nkind = "jsonl"\npath = "{jsonl}"\n'
    return write_config(directory, text)


def test_check_config_database_directory_missing(tmp_path: Path) -> None:
    """A database in a missing directory is a problem, as it is for syncd run."""
    missing = tmp_path / "missing"
    path = write_file_config(tmp_path, missing / "syncd.db")

    checked = check_config(path)
    ran = CliRunner().invoke(main, ["run", "-c", str(path)], env=CLEAN_ENV)

    problem = find_problem(listed_problems(checked), "daemon.database")
    assert checked.exit_code == EXIT_CONFIG, checked.output
    assert f"directory '{missing}' does not exist" in problem
    assert ran.exit_code == EXIT_CONFIG, ran.output
    assert problem in ran.stderr


def test_check_config_jsonl_directory_missing(tmp_path: Path) -> None:
    """A jsonl sink file in a missing directory is a problem naming the sink."""
    missing = tmp_path / "missing"
    jsonl = missing / "events.jsonl"
    path = write_file_config(tmp_path, tmp_path / "syncd.db", jsonl)

    result = check_config(path)

    problem = find_problem(listed_problems(result), "sinks.log.path")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"directory '{missing}' does not exist" in problem


def assert_reported_everywhere(path: Path, expected: str) -> None:
    """Check that check-config, run and events list exit 78 with ``expected``."""
    checked = check_config(path)
    ran = CliRunner().invoke(main, ["run", "-c", str(path)], env=CLEAN_ENV)
    listed = CliRunner().invoke(main, ["events", "list", "-c", str(path)])

    for result in (checked, ran, listed):
        assert result.exit_code == EXIT_CONFIG, result.output
        assert listed_problems(result) == [expected]


def test_database_path_is_directory(tmp_path: Path) -> None:
    """A database path that is a directory gets a file in it as the fix."""
    path = write_file_config(tmp_path, tmp_path)
    expected = (
        f"daemon.database: {tmp_path} is a directory; name a file in it, such "
        f"as sqlite:///{tmp_path / 'syncd.db'}"
    )

    assert_reported_everywhere(path, expected)


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("text", "is not an SQLite database"),
        ("dangling", "is a symbolic link to nothing"),
        ("fifo", "is not a regular file"),
    ],
)
def test_database_path_not_sqlite(tmp_path: Path, kind: str, fault: str) -> None:
    """A database path that is not an SQLite file is named, with the fix."""
    database = tmp_path / "syncd.db"
    if kind == "text":
        database.write_text("hello\n")
    elif kind == "dangling":
        database.symlink_to(tmp_path / "nowhere")
    else:
        os.mkfifo(database)
    expected = (
        f"daemon.database: {database} {fault}; point daemon.database at "
        "syncd's database file or at a new path"
    )

    assert_reported_everywhere(write_file_config(tmp_path, database), expected)


def test_database_empty_file_valid(tmp_path: Path) -> None:
    """An empty file is a valid place for a new database."""
    database = tmp_path / "syncd.db"
    database.touch()

    result = check_config(write_file_config(tmp_path, database))

    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("http://127.0.0.1:99999/hooks/SECRET1", "invalid URL (Port out of range"),
        ("ftp://127.0.0.1/hooks/SECRET1", "needs an http or https URL"),
        ("http://[::1/hooks/SECRET1", "invalid URL (Invalid IPv6 URL)"),
    ],
)
def test_sink_url_invalid_hides_path(tmp_path: Path, url: str, fault: str) -> None:
    """An unusable sink URL is named by its fault, never echoed with its token."""
    text = f'[sinks.app]\nkind = "http"\nurl = "{url}"\n'

    result = check_config(write_config(tmp_path, text))

    problem = find_problem(listed_problems(result), "sinks.app.url")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert fault in problem
    assert "SECRET1" not in result.output


def test_database_path_under_file(tmp_path: Path) -> None:
    """A database path below a regular file names that file, not a directory."""
    path = write_config(tmp_path, "")
    write_file_config(tmp_path, path / "x.db")
    expected = (
        f"daemon.database: {path} is a file, not a directory, so it cannot "
        f"contain {path / 'x.db'}; name a file in a directory, such as "
        f"sqlite:///{tmp_path / 'x.db'}"
    )

    assert_reported_everywhere(path, expected)


def test_database_path_with_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database path starting with ~ is reported as not expanded by syncd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    path = write_config(tmp_path, '[daemon]\ndatabase = "sqlite:///~/syncd.db"\n')
    expected = (
        "daemon.database: ~/syncd.db starts with '~', which syncd does not "
        "expand to a home directory; write the absolute path, such as "
        "sqlite:////home/someone/syncd.db"
    )

    assert_reported_everywhere(path, expected)


def test_db_upgrade_path_problem(tmp_path: Path) -> None:
    """db upgrade reports an unusable database path instead of a traceback."""
    path = write_file_config(tmp_path, tmp_path)

    result = CliRunner().invoke(main, ["db", "upgrade", "-c", str(path)])

    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"{tmp_path} is a directory" in find_problem(
        listed_problems(result), "daemon.database"
    )


def test_check_config_jsonl_path_faults(tmp_path: Path) -> None:
    """A jsonl path that is a directory, or lies below a file, is a problem."""
    regular = tmp_path / "regular.txt"
    regular.write_text("", encoding="utf-8")
    cases = {
        tmp_path: f"{tmp_path} is a directory; name a file in it, such as "
        f"{tmp_path / 'events.jsonl'}",
        regular / "events.jsonl": f"{regular} is a file, not a directory",
    }
    for jsonl, fragment in cases.items():
        path = write_file_config(tmp_path, tmp_path / "syncd.db", jsonl)

        result = check_config(path)

        assert result.exit_code == EXIT_CONFIG, result.output
        assert fragment in find_problem(listed_problems(result), "sinks.log.path")


def test_check_config_state_directory_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing state directory is a warning, since systemd creates it."""
    state = tmp_path / "state"
    monkeypatch.setattr(file_checks, "STATE_DIRECTORY", str(state))
    path = write_file_config(tmp_path, state / "syncd.db", state / "events.jsonl")

    result = check_config(path)

    assert result.exit_code == 0, result.output
    assert f"warning: daemon.database: directory '{state}' does not exist" in (
        result.stderr
    )
    assert f"warning: sinks.log.path: directory '{state}' does not exist" in (
        result.stderr
    )
    assert "StateDirectory=syncd creates it" in result.stderr


def test_check_config_usable_files_valid(tmp_path: Path) -> None:
    """Files in an existing directory pass check-config without a warning."""
    jsonl = tmp_path / "events.jsonl"
    path = write_file_config(tmp_path, tmp_path / "syncd.db", jsonl)

    result = check_config(path)

    assert result.exit_code == 0, result.output
    assert "daemon.database" not in result.stderr
    assert "sinks.log.path" not in result.stderr


# Secrets


SECRET_VALUES = [
    "sk_live_INLINE_SECRET",
    "whsec_ENV_SECRET",
    "sk_live_FILE_SECRET",
    "whsec_CREDENTIAL_SECRET",
    "sk_live_TABLE_SECRET",
    "db_PASSWORD_SECRET",
]


@pytest.fixture
def secret_files(tmp_path: Path) -> Path:
    """Write a token file beside the configuration and a credentials directory."""
    (tmp_path / "token.txt").write_text("sk_live_FILE_SECRET\n", encoding="utf-8")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "hook").write_text("whsec_CREDENTIAL_SECRET", encoding="utf-8")
    return credentials


def test_secrets_absent_from_errors(tmp_path: Path, secret_files: Path) -> None:
    """No secret value appears in check-config's output when it lists problems."""
    text = """
[daemon]
database = "mysql://root:db_PASSWORD_SECRET@127.0.0.1/syncd"

[providers.p]
connector = "stripe"
api_token = "sk_live_INLINE_SECRET"
webhook_secret = { env = "HOOK_SECRET" }
poll_interval = "5x"
bogus_key = "x"

[providers.q]
connector = "stripe"
api_token = { value = "sk_live_TABLE_SECRET" }

[providers.r]
connector = "stripe"
api_token = { file = "token.txt" }
webhook_secret = { credential = "hook" }
lookback = "1s"
"""
    result = check_config(
        write_config(tmp_path, text),
        HOOK_SECRET="whsec_ENV_SECRET",
        CREDENTIALS_DIRECTORY=str(secret_files),
    )

    assert result.exit_code == EXIT_CONFIG
    assert len(listed_problems(result)) == 5
    for secret in SECRET_VALUES:
        assert secret not in result.output


def test_secrets_absent_from_repr(tmp_path: Path, secret_files: Path) -> None:
    """repr and str of a loaded configuration show no secret value."""
    text = """
[providers.p]
connector = "stripe"
api_token = "sk_live_INLINE_SECRET"
webhook_secret = { env = "HOOK_SECRET" }

[providers.r]
connector = "stripe"
api_token = { file = "token.txt" }
webhook_secret = { credential = "hook" }
"""
    environ = {
        "HOOK_SECRET": "whsec_ENV_SECRET",
        "CREDENTIALS_DIRECTORY": str(secret_files),
    }
    config = config_module.load(write_config(tmp_path, text), environ=environ)

    text_forms = [repr(config), str(config), repr(config.providers["p"])]
    text_forms.append(config.model_dump_json())
    for text_form in text_forms:
        for secret in SECRET_VALUES:
            assert secret not in text_form
    token = config.providers["p"].api_token
    assert token is not None
    assert token.get_secret_value() == "sk_live_INLINE_SECRET"


def load_secret(directory: Path, source: str, environ: dict[str, str]) -> str:
    """Load a one-provider configuration and return its resolved api_token."""
    path = write_config(directory, STRIPE + f"api_token = {source}\n")
    config: Config = config_module.load(path, environ=environ)
    token = config.providers["p"].api_token
    assert token is not None
    return token.get_secret_value()


def test_secret_inline_string(tmp_path: Path) -> None:
    """A plain string is the secret itself."""
    assert load_secret(tmp_path, '"sk_inline"', {}) == "sk_inline"


def test_secret_from_env(tmp_path: Path) -> None:
    """{ env = NAME } reads the variable from the given environment."""
    secret = load_secret(tmp_path, '{ env = "TOKEN" }', {"TOKEN": "sk_env"})

    assert secret == "sk_env"


def test_secret_from_empty_env(tmp_path: Path) -> None:
    """An empty environment variable is reported like a missing one."""
    path = write_config(tmp_path, STRIPE + 'api_token = { env = "TOKEN" }\n')

    problems = load_problems(path, {"TOKEN": ""})

    assert "not set or empty" in find_problem(problems, "providers.p.api_token")


def test_secret_from_file(tmp_path: Path, secret_files: Path) -> None:
    """{ file = PATH } reads a path relative to the configuration, stripped."""
    secret = load_secret(tmp_path, '{ file = "token.txt" }', {})

    assert secret == "sk_live_FILE_SECRET"


def test_secret_from_empty_file(tmp_path: Path) -> None:
    """An empty secret file is a problem, not an empty secret."""
    (tmp_path / "token.txt").write_text("\n", encoding="utf-8")
    path = write_config(tmp_path, STRIPE + 'api_token = { file = "token.txt" }\n')

    problems = load_problems(path)

    assert "is empty" in find_problem(problems, "providers.p.api_token")


def test_secret_from_credential(tmp_path: Path, secret_files: Path) -> None:
    """{ credential = NAME } reads $CREDENTIALS_DIRECTORY/NAME."""
    environ = {"CREDENTIALS_DIRECTORY": str(secret_files)}

    secret = load_secret(tmp_path, '{ credential = "hook" }', environ)

    assert secret == "whsec_CREDENTIAL_SECRET"


def test_secret_credential_without_directory(tmp_path: Path) -> None:
    """A credential without $CREDENTIALS_DIRECTORY names the credential and fix."""
    path = write_config(tmp_path, STRIPE + 'api_token = { credential = "hook" }\n')

    problem = find_problem(load_problems(path), "providers.p.api_token")

    assert "'hook'" in problem
    assert "$CREDENTIALS_DIRECTORY" in problem
    assert "LoadCredential=" in problem


def test_secret_credential_missing(tmp_path: Path, secret_files: Path) -> None:
    """A credential missing from $CREDENTIALS_DIRECTORY names the file it read."""
    path = write_config(tmp_path, STRIPE + 'api_token = { credential = "none" }\n')
    environ = {"CREDENTIALS_DIRECTORY": str(secret_files)}

    problem = find_problem(load_problems(path, environ), "providers.p.api_token")

    assert "cannot read secret file" in problem
    assert str(secret_files / "none") in problem


# Secrets left unresolved for commands that only read the store

UNAVAILABLE_SECRETS = """
[daemon]
database = "sqlite:///DATABASE_PATH"

[providers.payments]
connector = "stripe"
api_token = { env = "UNSET_TOKEN" }
webhook_secret = { credential = "hook" }

[providers.shop]
connector = "stripe"
api_token = { file = "missing-token.txt" }

[providers.standard]
connector = "standard-webhooks"
webhook_secret = { env = "UNSET_HOOK_SECRET" }

[sinks.app]
kind = "http"
url = "http://127.0.0.1:9/hooks"
secret = { env = "UNSET_SINK_SECRET" }
"""
UNAVAILABLE_KEYS = [
    "providers.payments.api_token",
    "providers.payments.webhook_secret",
    "providers.shop.api_token",
    "providers.standard.webhook_secret",
    "sinks.app.secret",
]


def unavailable_secrets_config(directory: Path) -> Path:
    """Write the configuration and create its database, as syncd run would."""
    database = directory / "syncd.db"
    Store(f"sqlite:///{database}").dispose()
    text = UNAVAILABLE_SECRETS.replace("DATABASE_PATH", str(database))
    return write_config(directory, text)


def test_optional_secrets_left_unset(tmp_path: Path) -> None:
    """require_secrets=False loads, leaving unavailable secrets unset."""
    path = unavailable_secrets_config(tmp_path)

    config = config_module.load(path, environ={}, require_secrets=False)

    assert config.providers["payments"].api_token is None
    assert config.providers["payments"].webhook_secret is None
    assert config.providers["shop"].api_token is None
    assert config.sinks["app"].secret is None


def test_optional_secrets_recorded(tmp_path: Path) -> None:
    """Each secret left unset is named in the configuration and its provider."""
    path = unavailable_secrets_config(tmp_path)

    config = config_module.load(path, environ={}, require_secrets=False)

    assert sorted(config.unresolved_secrets) == UNAVAILABLE_KEYS
    payments = config.providers["payments"]
    assert payments.unresolved_secrets == {"api_token", "webhook_secret"}
    assert config.providers["shop"].unresolved_secrets == {"api_token"}


def test_optional_secrets_keep_mode(tmp_path: Path) -> None:
    """A provider whose webhook_secret is unset still reports webhooks."""
    path = unavailable_secrets_config(tmp_path)

    config = config_module.load(path, environ={}, require_secrets=False)

    assert config.providers["payments"].mode == "webhooks+reconcile"
    assert config.providers["standard"].mode == "webhooks+reconcile"
    assert config.providers["shop"].mode == "polling"


def test_optional_secrets_use_available(tmp_path: Path) -> None:
    """Secrets that are available are still resolved when not required."""
    path = unavailable_secrets_config(tmp_path)

    config = config_module.load(
        path, environ={"UNSET_TOKEN": "sk_env"}, require_secrets=False
    )

    token = config.providers["payments"].api_token
    assert token is not None
    assert token.get_secret_value() == "sk_env"
    assert "providers.payments.api_token" not in config.unresolved_secrets


def test_required_secrets_by_default(tmp_path: Path) -> None:
    """By default each unavailable secret is a problem."""
    path = unavailable_secrets_config(tmp_path)

    problems = load_problems(path)

    for key in UNAVAILABLE_KEYS:
        assert find_problem(problems, key)


def test_optional_secrets_malformed_source(tmp_path: Path) -> None:
    """A malformed secret source is a problem even when secrets are optional."""
    path = write_config(tmp_path, STRIPE + 'api_token = { value = "x" }\n')

    with pytest.raises(ConfigError) as caught:
        config_module.load(path, environ={}, require_secrets=False)

    problem = find_problem(caught.value.problems, "providers.p.api_token")
    assert "invalid secret table" in problem


def test_unresolved_secrets_key_reserved(tmp_path: Path) -> None:
    """unresolved_secrets cannot be set from the file."""
    path = write_config(tmp_path, 'unresolved_secrets = ["x"]\n')

    problems = load_problems(path)

    assert "unknown key" in find_problem(problems, "unresolved_secrets")


def invoke_without_secrets(path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "-c", str(path)], env=CLEAN_ENV)


READ_ONLY_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("events", "list"),
    ("events", "tail"),
    ("deliveries", "list"),
    ("deliveries", "retry", "--dead"),
    ("deliveries", "replay", "--sink", "app", "--since", "1h"),
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_read_only_command_without_secrets(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Commands that work on the store alone run without the secrets."""
    path = unavailable_secrets_config(tmp_path)

    result = invoke_without_secrets(path, *command)

    assert result.exit_code == 0, result.output


def test_store_command_missing_database(tmp_path: Path) -> None:
    """A command on a database file that does not exist creates none."""
    path = unavailable_secrets_config(tmp_path)
    (tmp_path / "syncd.db").unlink()

    result = invoke_without_secrets(path, "status")

    assert result.exit_code == EXIT_CONFIG
    assert "syncd.db not found" in result.stderr
    assert not (tmp_path / "syncd.db").exists()


def test_events_show_without_secrets(tmp_path: Path) -> None:
    """events show reaches the store without secrets: a missing entry exits 1."""
    path = unavailable_secrets_config(tmp_path)

    result = invoke_without_secrets(path, "events", "show", "evt_404")

    assert result.exit_code == 1
    assert "evt_404" in result.stderr


@pytest.mark.parametrize(
    "command", [("run",), ("reconcile",), ("check-config",)], ids=" ".join
)
def test_secret_commands_reject_missing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """run, reconcile and check-config exit 78 naming each missing secret."""
    path = unavailable_secrets_config(tmp_path)

    result = invoke_without_secrets(path, *command)

    problems = listed_problems(result)
    assert result.exit_code == EXIT_CONFIG
    assert "UNSET_TOKEN is not set" in find_problem(
        problems, "providers.payments.api_token"
    )
    for key in UNAVAILABLE_KEYS:
        assert find_problem(problems, key)


# Parsed values in a loaded configuration


def test_load_parses_values(tmp_path: Path) -> None:
    """Durations, sizes and times in the file become timedelta, bytes and UTC."""
    text = """
[daemon]
max_body = "512KiB"
shutdown_timeout = "90s"

[providers.p]
connector = "stripe"
api_token = "sk_test_1"
poll_interval = "2m"
reconcile_window = "7d"
lookback = 60
start_from = "2024-05-01T12:00:00.5+02:00"
"""
    config = config_module.load(write_config(tmp_path, text), environ={})

    provider = config.providers["p"]
    assert config.daemon.max_body == 512 * 1024
    assert config.daemon.shutdown_timeout == timedelta(seconds=90)
    assert provider.poll_interval == timedelta(minutes=2)
    assert provider.reconcile_window == timedelta(days=7)
    assert provider.lookback == timedelta(seconds=60)
    assert provider.start_from == datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)


def test_load_start_from_forms_agree(tmp_path: Path) -> None:
    """start_from written with 'Z' and with '+00:00' is the same instant."""
    instants = []
    for form in ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00"):
        text = STRIPE_WITH_TOKEN + f'start_from = "{form}"\n'
        path = write_config(tmp_path, text)
        instants.append(config_module.load(path, environ={}).providers["p"].start_from)

    assert instants[0] == instants[1]
    assert instants[0] == NOW


def test_load_start_from_duration(tmp_path: Path) -> None:
    """start_from written as a duration means that long before loading."""
    path = write_config(tmp_path, STRIPE_WITH_TOKEN + 'start_from = "6h"\n')

    before = datetime.now(UTC)
    start_from = config_module.load(path, environ={}).providers["p"].start_from
    after = datetime.now(UTC)

    assert isinstance(start_from, datetime)
    assert before - timedelta(hours=6) <= start_from
    assert start_from <= after - timedelta(hours=6)


def test_load_start_from_now(tmp_path: Path) -> None:
    """start_from defaults to the literal 'now'."""
    path = write_config(tmp_path, STRIPE_WITH_TOKEN)
    config = config_module.load(path, environ={})

    assert config.providers["p"].start_from == "now"


# units.py


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("250ms", 0.25),
        ("1.5h", 5400),
        (" 10s ", 10),
        ("0s", 0),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_parse_duration_valid(text: str | float, seconds: float) -> None:
    """Durations with each unit, or bare numbers of seconds, parse."""
    assert units.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value",
    [
        "5x",
        "",
        "s",
        "5",
        "-5s",
        "5 minutes",
        "99999999999d",
        -1,
        True,
        float("inf"),
        float("nan"),
        ["1m"],
        None,
    ],
)
def test_parse_duration_invalid(value: object) -> None:
    """Invalid durations raise ValueError naming the value."""
    with pytest.raises(ValueError, match="invalid duration"):
        units.parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("25MB", 25_000_000),
        ("512KiB", 524_288),
        ("1GiB", 1024**3),
        ("1.5KB", 1500),
        ("2gb", 2_000_000_000),
        ("100B", 100),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_parse_size_valid(text: str | int, size: int) -> None:
    """Sizes in decimal and binary units, or bare bytes, parse."""
    assert units.parse_size(text) == size


@pytest.mark.parametrize(
    "value",
    ["5x", "", "0", "0.5B", "-1MB", "25 MBs", "9" * 400 + "GB", 0, -5, True, 1.5, None],
)
def test_parse_size_invalid(value: object) -> None:
    """Invalid or non-positive sizes raise ValueError naming the value."""
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00z",
        "2024-05-01T10:00:00+00:00",
        "2024-05-01T12:00:00+02:00",
        "2024-05-01T06:00:00-04:00",
    ],
)
def test_parse_time_forms(text: str) -> None:
    """'Z', '+00:00' and other offsets give the same instant in UTC."""
    parsed = units.parse_time(text)

    assert parsed == NOW
    assert parsed.utcoffset() == timedelta(0)


def test_parse_time_microseconds() -> None:
    """Fractional seconds are kept to the microsecond."""
    parsed = units.parse_time("2024-05-01T10:00:00.123456Z")

    assert parsed.microsecond == 123456


def test_parse_time_aware_datetime() -> None:
    """An aware datetime is converted to UTC."""
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    parsed = units.parse_time(local)

    assert parsed == NOW
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "ago"),
    [("6h", timedelta(hours=6)), ("90s", timedelta(seconds=90)), ("0s", timedelta())],
)
def test_parse_time_duration_ago(text: str, ago: timedelta) -> None:
    """A duration as a time means that long before ``now``."""
    assert units.parse_time(text, now=NOW) == NOW - ago


def test_parse_time_duration_default_now() -> None:
    """Without ``now``, a duration counts back from the current time."""
    before = datetime.now(UTC)
    parsed = units.parse_time("1h")
    after = datetime.now(UTC)

    assert before - timedelta(hours=1) <= parsed
    assert parsed <= after - timedelta(hours=1)


@pytest.mark.parametrize(
    "value",
    ["2024-05-01T10:00:00", datetime(2024, 5, 1, 10, 0)],
)
def test_parse_time_rejects_naive(value: str | datetime) -> None:
    """A time without a UTC offset is rejected, not guessed."""
    with pytest.raises(ValueError, match="no UTC offset"):
        units.parse_time(value)


@pytest.mark.parametrize("value", ["yesterday", "", "999999999d", 5, None])
def test_parse_time_invalid(value: object) -> None:
    """Text that is neither ISO 8601 nor a duration raises ValueError."""
    with pytest.raises(ValueError, match="invalid time"):
        units.parse_time(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(minutes=15), "15m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=7), "7d"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    """format_duration writes the largest whole unit, as configuration does."""
    assert units.format_duration(delta) == text


def test_format_duration_round_trip() -> None:
    """format_duration's output parses back to the same duration."""
    for text in ("30s", "15m", "2h", "7d", "90s"):
        assert units.format_duration(units.parse_duration(text)) == text


@pytest.mark.parametrize(
    ("microsecond", "text"),
    [(120, "2024-05-01T10:00:00.000120Z"), (0, "2024-05-01T10:00:00.000000Z")],
)
def test_to_utc_iso(microsecond: int, text: str) -> None:
    """to_utc_iso writes UTC with 'Z' and always six fraction digits."""
    offset = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 12, 0, 0, microsecond, tzinfo=offset)

    assert units.to_utc_iso(local) == text
