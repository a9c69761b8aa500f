"""The TOML configuration, validated into models; every problem is listed at once."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from syncd import units
from syncd.errors import ConfigError
from syncd.sink_config import SinkConfig

DEFAULT_PATH = "/etc/syncd/config.toml"
_KEY_NAME = re.compile(r"^[a-z_]+$")
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Duration = units.Duration
Size = units.Size


class SecretSource(BaseModel):
    """Where a secret comes from: exactly one of env, file or credential."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = None
    file: str | None = None
    credential: str | None = None


START_FROM_FORMS = (
    "'now', an ISO 8601 time with an offset such as '2024-05-01T10:00:00Z', or "
    "a duration ago such as '7d'"
)


def _parse_start_from(value: Any) -> Any:
    if value == "now":
        return value
    return units.parse_time(value, forms=START_FROM_FORMS)


class DaemonConfig(BaseModel):
    """The ``[daemon]`` table."""

    model_config = ConfigDict(extra="forbid")

    database: str = "sqlite:////var/lib/syncd/syncd.db"
    listen: str = "127.0.0.1:8787"
    max_body: Size = 25 * 1000**2
    shutdown_timeout: Duration = timedelta(seconds=30)
    read_timeout: Duration = timedelta(seconds=30)
    max_connections: int = Field(default=200, ge=1, le=100_000)
    max_header_size: Size = 16 * 1024
    max_url_length: int = Field(default=4096, ge=256, le=1_000_000)
    max_buffered: Size = 256 * 1000**2

    @field_validator("read_timeout")
    @classmethod
    def _check_read_timeout(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=100):
            raise ValueError(
                f"{units.format_duration(value)} is too short for any client; "
                "use at least '100ms' (the default is '30s')"
            )
        return value

    @field_validator("max_header_size")
    @classmethod
    def _check_header_size(cls, value: int) -> int:
        if value < 1024:
            raise ValueError(
                f"{value} bytes cannot fit a webhook's headers; use at least '1KiB'"
            )
        return value

    @model_validator(mode="after")
    def _check_buffered(self) -> DaemonConfig:
        if self.max_buffered < self.max_body:
            raise ValueError(
                f"max_buffered: {self.max_buffered} bytes is less than max_body "
                f"({self.max_body} bytes), so the largest webhooks would always "
                "get 503; raise max_buffered"
            )
        return self

    @field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            # Only the scheme is shown, since the URL may contain a password.
            scheme = value.partition(":")[0]
            raise ValueError(
                f"unsupported database URL scheme {scheme!r}: use "
                "'sqlite:////path/to/syncd.db' or 'postgresql://user@host/db'"
            )
        if _is_memory_database(value):
            raise ValueError(
                f"{value!r} is an in-memory SQLite database, which loses every "
                "event when syncd stops and which syncd's threads do not share; "
                "name a file, such as 'sqlite:////var/lib/syncd/syncd.db'"
            )
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise ValueError(
                f"invalid listen address {value!r}: write HOST:PORT, "
                "e.g. '127.0.0.1:8787'"
            )
        if int(port) > 65535:
            raise ValueError(
                f"invalid listen address {value!r}: port {port} is out of range "
                "1 to 65535 (0 lets the system pick a free port)"
            )
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite database file as written, relative or absolute.

        None for PostgreSQL, an in-memory database or a URL that SQLAlchemy
        cannot parse.
        """
        try:
            url = make_url(self.database)
        except ArgumentError:
            return None
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return url.database


def _is_memory_database(url: str) -> bool:
    """Return True for the URL of an in-memory SQLite database."""
    if not url.startswith("sqlite:"):
        return False
    path = url.removeprefix("sqlite:").lstrip("/")
    return (
        path in ("", ":memory:")
        or path.startswith("file::memory:")
        or "mode=memory" in path
    )


_ONCE_A_SECOND = (
    timedelta(seconds=1),
    "1s",
    "is too short: a provider is not asked more than once a second",
)
# The shortest value of each duration setting of a provider, as written in
# messages, and what a shorter one would do.
_SHORTEST = {
    "signature_tolerance": (
        timedelta(seconds=1),
        "1s",
        "would reject every webhook as stale",
    ),
    "poll_interval": _ONCE_A_SECOND,
    "reconcile_interval": _ONCE_A_SECOND,
    "reconcile_window": (
        timedelta(seconds=1),
        "1s",
        "is too short: a reconcile looks this far back for events that "
        "webhooks missed, and a zero window looks back no time at all",
    ),
    # httpx applies the timeout to each phase of a request: waiting for a
    # pooled connection, connecting, sending and receiving. Connecting to a
    # remote API, with DNS and TLS, can take hundreds of milliseconds.
    "request_timeout": (
        timedelta(seconds=1),
        "1s",
        "is too short for an API request to connect and receive a response",
    ),
    "max_retry_wait": (
        timedelta(seconds=1),
        "1s",
        "is too short: retries would not wait at all, and every rate limit "
        "would end the run",
    ),
    "lookback": (
        timedelta(seconds=60),
        "60s",
        "is too short to catch events that become visible late",
    ),
}


class ProviderConfig(BaseModel):
    """One ``[providers.NAME]`` table.

    Keys not listed here belong to the connector and are validated by its
    ``Options`` model into ``options``. Secrets are resolved when the
    configuration is loaded. A configuration loaded with
    ``require_secrets=False`` leaves a secret that is not available as None
    and names its key in ``unresolved_secrets``.
    """

    model_config = ConfigDict(extra="allow")
    _unresolved_secrets: frozenset[str] = PrivateAttr(default=frozenset())

    name: str = ""
    connector: str
    api_base_url: str | None = None
    api_token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    signature_tolerance: Duration = timedelta(minutes=5)
    poll_interval: Duration = timedelta(minutes=1)
    reconcile_interval: Duration = timedelta(minutes=15)
    reconcile_window: Duration = timedelta(hours=2)
    lookback: Duration = timedelta(minutes=2)
    start_from: Annotated[
        Literal["now"] | datetime, BeforeValidator(_parse_start_from)
    ] = "now"
    page_size: int = Field(default=100, ge=1, le=1000)
    request_timeout: Duration = timedelta(seconds=30)
    max_attempts: int = Field(default=5, ge=1, le=100)
    max_retry_wait: Duration = timedelta(minutes=5)
    options: Any = None

    @field_validator("api_base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"invalid URL {value!r}: write it with its scheme and host, "
                "e.g. 'https://api.example.com'"
            )
        return value.rstrip("/")

    @field_validator(*_SHORTEST)
    @classmethod
    def _check_shortest(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        shortest, text, problem = _SHORTEST[info.field_name]
        if value < shortest:
            default = units.format_duration(cls.model_fields[info.field_name].default)
            raise ValueError(
                f"{units.format_duration(value)} {problem}; use at least "
                f"'{text}' (the default is '{default}')"
            )
        return value

    @property
    def unresolved_secrets(self) -> frozenset[str]:
        """Secret keys that are configured but were not available when loaded."""
        return self._unresolved_secrets

    @property
    def webhooks_enabled(self) -> bool:
        """Tell whether a webhook_secret is configured, resolved or not."""
        return (
            self.webhook_secret is not None
            or "webhook_secret" in self._unresolved_secrets
        )

    @property
    def mode(self) -> str:
        return "webhooks+reconcile" if self.webhooks_enabled else "polling"


class Config(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid")

    daemon: DaemonConfig = DaemonConfig()
    providers: dict[str, ProviderConfig] = {}
    sinks: dict[str, Any] = {}
    path: str | None = None
    inline_secrets: bool = False
    # Keys such as "providers.payments.api_token" whose secret was not
    # available. Only a load with require_secrets=False leaves any.
    unresolved_secrets: list[str] = []


class MissingSecretError(ValueError):
    """A well-formed secret source whose value is not available here."""


@dataclass
class _SecretContext:
    config_dir: Path
    environ: dict[str, str]
    required: bool = True
    unresolved: list[str] = field(default_factory=list)


SECRET_KEYS = ("api_token", "webhook_secret")


def resolve_secret(value: Any, where: str, context: _SecretContext) -> str:
    """Return the secret text that ``value`` points to.

    Raises MissingSecretError when the variable, file or credential is not
    available, and ValueError when ``value`` is not a valid secret source.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: invalid secret {type(value).__name__}; write "
            '{ env = "NAME" }, { file = "PATH" } or { credential = "NAME" }'
        )
    try:
        source = SecretSource.model_validate(value)
    except ValidationError:
        keys = ", ".join(sorted(str(key) for key in value))
        raise ValueError(
            f"{where}: invalid secret table with keys {keys}; the only keys are "
            "env, file and credential, each a string"
        ) from None
    given = [k for k in ("env", "file", "credential") if getattr(source, k)]
    empty = [k for k in ("env", "file", "credential") if getattr(source, k) == ""]
    if empty:
        raise ValueError(
            f"{where}: {empty[0]} is empty; write the variable, file or "
            "credential name to read the secret from"
        )
    if len(given) != 1:
        raise ValueError(
            f"{where}: give exactly one of env, file or credential, not {given}"
        )
    if source.env is not None:
        return _secret_from_env(source.env, where, context)
    if source.file is not None:
        return _secret_from_file(context.config_dir / source.file, where)
    return _secret_from_credential(str(source.credential), where, context)


def _secret_from_env(name: str, where: str, context: _SecretContext) -> str:
    text = context.environ.get(name)
    if not text:
        raise MissingSecretError(
            f"{where}: environment variable {name} is not set or empty; "
            "export it, or use { file = ... } instead"
        )
    return text


def _secret_from_file(path: Path, where: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MissingSecretError(
            f"{where}: cannot read secret file {str(path)!r} ({exc.strerror}); "
            "check the path and that syncd's user may read it"
        ) from None
    if not text:
        raise MissingSecretError(f"{where}: secret file {str(path)!r} is empty")
    return text


def _secret_from_credential(name: str, where: str, context: _SecretContext) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(
            f"{where}: invalid credential name {name!r}; write the name given "
            "to LoadCredential=, with no '/'"
        )
    directory = context.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise MissingSecretError(
            f"{where}: credential {name!r} needs $CREDENTIALS_DIRECTORY, which "
            "systemd sets for LoadCredential=; run under systemd or use "
            "{ env = ... } or { file = ... }"
        )
    return _secret_from_file(Path(directory) / name, where)


def load(
    path: str | os.PathLike[str] | None = None,
    environ: Any = None,
    *,
    require_secrets: bool = True,
) -> Config:
    """Read and validate the configuration; raise ConfigError listing every problem.

    ``path`` defaults to ``$SYNCD_CONFIG``, then ``/etc/syncd/config.toml``.
    With ``require_secrets=False``, for commands that only read the store, a
    secret whose variable, file or credential is not available is left unset
    and listed in ``unresolved_secrets`` instead of being a problem. Checks
    that need such a secret's value are skipped. A malformed secret source is
    still a problem.
    """
    environ = dict(os.environ if environ is None else environ)
    chosen = Path(path or environ.get("SYNCD_CONFIG") or DEFAULT_PATH)
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            [f"{chosen}: file not found; pass -c PATH or set SYNCD_CONFIG"]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{chosen}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{chosen}: invalid TOML: {exc}"]) from None
    context = _SecretContext(
        config_dir=chosen.parent, environ=environ, required=require_secrets
    )
    config = parse(data, context)
    config.path = str(chosen)
    return config


def parse(data: dict[str, Any], context: _SecretContext | None = None) -> Config:
    """Validate a configuration already read from TOML."""
    context = context or _SecretContext(Path.cwd(), dict(os.environ))
    problems: list[str] = []
    data = dict(data)
    raw_providers = data.pop("providers", {})
    if not isinstance(raw_providers, dict):
        problems.append("providers: must be a table of [providers.NAME] tables")
        raw_providers = {}
    raw_sinks = data.pop("sinks", {})
    if not isinstance(raw_sinks, dict):
        problems.append("sinks: must be a table of [sinks.NAME] tables")
        raw_sinks = {}

    for reserved in ("path", "inline_secrets", "unresolved_secrets"):
        if reserved in data:
            data.pop(reserved)
            problems.append(f"{reserved}: unknown key; remove it or check its spelling")
    base = _validate(Config, data, "", problems)
    providers = {}
    for name, table in raw_providers.items():
        provider = _parse_provider(name, table, context, problems)
        if provider is not None:
            providers[name] = provider
    sinks = {}
    for name, table in raw_sinks.items():
        sink = _parse_sink(name, table, set(raw_providers), context, problems)
        if sink is not None:
            sinks[name] = sink
    if problems:
        raise ConfigError(problems)
    assert base is not None
    base.providers = providers
    base.sinks = sinks
    base.unresolved_secrets = list(context.unresolved)
    base.inline_secrets = any(
        isinstance(table.get(key), str)
        for table in [*raw_providers.values(), *raw_sinks.values()]
        for key in (*SECRET_KEYS, "secret")
    )
    return base


def _parse_sink(
    name: str,
    table: Any,
    provider_names: set[str],
    context: _SecretContext,
    problems: list[str],
) -> SinkConfig | None:
    where = f"sinks.{name}"
    if not PROVIDER_NAME.match(name):
        problems.append(
            f"{where}: invalid sink name {name!r}; use lower-case letters, "
            "digits, '-' and '_'"
        )
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None
    table = dict(table, name=name)
    before = len(problems)
    _resolve_table_secret(table, "secret", where, context, problems)
    for provider in table.get("providers") or []:
        if provider not in provider_names:
            problems.append(
                f"{where}.providers: no provider {provider!r} is configured; "
                f"configured: {', '.join(sorted(provider_names)) or 'none'}"
            )
    sink = _validate(SinkConfig, table, where, problems)
    return sink if len(problems) == before else None


def _parse_provider(
    name: str, table: Any, context: _SecretContext, problems: list[str]
) -> ProviderConfig | None:
    where = f"providers.{name}"
    if not PROVIDER_NAME.match(name):
        problems.append(
            f"{where}: invalid provider name {name!r}; use lower-case letters, "
            "digits, '-' and '_' (it becomes part of the webhook URL)"
        )
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return None

    table = dict(table, name=name)
    before = len(problems)
    unresolved = {
        key
        for key in SECRET_KEYS
        if not _resolve_table_secret(table, key, where, context, problems)
    }
    provider = _validate(ProviderConfig, table, where, problems)
    # The connector's own keys are checked even when a common key is invalid,
    # so that one run lists every problem of the table.
    connector_name = table.get("connector")
    if not isinstance(connector_name, str):
        return None
    connector = _connector_class(connector_name, where, problems)
    if connector is None:
        return None
    extra = {k: v for k, v in table.items() if k not in ProviderConfig.model_fields}
    options = _validate(connector.Options, extra, where, problems)
    _check_page_size(connector, provider, table, where, problems)
    if provider is None or options is None:
        return None
    provider.options = options
    provider._unresolved_secrets = frozenset(unresolved)
    for key, message in connector.check_provider(provider):
        # A secret that was not resolved has no value to check. Its own
        # problem is listed already, unless secrets are optional.
        if key not in unresolved:
            problems.append(f"{where}.{key}: {message}")
    return provider if len(problems) == before else None


def _check_page_size(
    connector: Any,
    provider: ProviderConfig | None,
    table: dict[str, Any],
    where: str,
    problems: list[str],
) -> None:
    """Add a problem when ``page_size`` is above the connector's maximum.

    When another common key is invalid, ``provider`` is None and the table's
    integer is checked instead, so that one run lists this problem too.
    """
    maximum = connector.max_page_size
    key = f"{where}.page_size"
    if provider is not None:
        page_size = provider.page_size
    else:
        default = ProviderConfig.model_fields["page_size"].default
        page_size = table.get("page_size", default)
    if maximum is None or not isinstance(page_size, int) or page_size <= maximum:
        return
    # A page_size that failed validation, such as 5000, is listed already.
    if any(problem.startswith(f"{key}: ") for problem in problems):
        return
    problems.append(
        f"{key}: page_size {page_size} is above the {connector.name} "
        f"connector's maximum of {maximum}; use at most {maximum}"
    )


def _resolve_table_secret(
    table: dict[str, Any],
    key: str,
    where: str,
    context: _SecretContext,
    problems: list[str],
) -> bool:
    """Replace ``table[key]`` by the secret it names, or drop the key.

    Returns False when the key is given but its secret was not resolved. The
    reason is added to ``problems``, unless the secret is only unavailable
    and not required (see ``load``): then the key is recorded in
    ``context.unresolved``.
    """
    if key not in table:
        return True
    path = f"{where}.{key}"
    try:
        table[key] = resolve_secret(table[key], path, context)
        return True
    except MissingSecretError as exc:
        if context.required:
            problems.append(str(exc))
        else:
            context.unresolved.append(path)
    except ValueError as exc:
        problems.append(str(exc))
    table.pop(key)
    return False


def _connector_class(name: str, where: str, problems: list[str]) -> Any:
    from connectors.registry import available, load_connector

    try:
        return load_connector(name)
    except KeyError:
        problems.append(
            f"{where}.connector: unknown connector {name!r}; installed: "
            f"{', '.join(sorted(available()))}"
        )
        return None


def _validate(model: Any, data: Any, where: str, problems: list[str]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(_describe(error, where))
        return None


def _describe(error: Any, where: str) -> str:
    path = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or check its spelling"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    # A check across keys names its key first ("url: ..."); move it to the path.
    key, separator, rest = message.partition(": ")
    if not error["loc"] and separator and _KEY_NAME.match(key):
        path, message = f"{path}.{key}", rest
    if kind.startswith("value_error"):
        return f"{path}: {message}"
    return f"{path}: {message} (got {error.get('input')!r})"


def missing_token_warnings(config: Config) -> list[str]:
    """Return a warning for each provider whose API needs an api_token it lacks.

    Not an error: a provider may be configured for webhooks first, with the
    token added later. Its polls and reconciles fail until then.
    """
    from connectors.registry import load_connector

    warnings = []
    for name, provider in config.providers.items():
        connector = load_connector(provider.connector)
        if not connector.api_token_required or provider.api_token is not None:
            continue
        if "api_token" in provider.unresolved_secrets:
            continue
        warnings.append(
            f"providers.{name}.api_token: missing, so every poll and reconcile "
            f'of {name} fails with 401; add api_token = {{ env = "NAME" }}'
        )
    return warnings


def warn_if_world_readable(config: Config) -> str | None:
    """Return a warning when a file with inline secrets is readable by others."""
    if not config.inline_secrets or config.path is None:
        return None
    path = config.path
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"{path} is readable by other users; if it holds inline secrets, "
            f"run 'chmod 600 {path}' or move them to {{ credential = ... }}"
        )
    return None
