"""The ``[sinks.NAME]`` tables: where logged events are delivered."""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from syncd.units import Duration

# The daemon leases a row for 20 timeouts. A longer timeout would keep the rows
# of a crashed worker from other workers for more than 20 hours.
MAX_TIMEOUT = timedelta(hours=1)

KIND_KEYS = {
    "http": {"url", "secret", "headers"},
    "command": {"command"},
    "jsonl": {"path"},
}


class SinkConfig(BaseModel):
    """One ``[sinks.NAME]`` table.

    ``providers`` and ``types`` filter what the sink receives (empty means
    everything; types are shell-style patterns such as ``invoice.*``).
    ``ordering = "resource"`` delivers the events of one resource in log
    order, holding later ones while an earlier one fails.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    kind: Literal["http", "command", "jsonl"]
    providers: list[str] = []
    types: list[str] = []
    url: str | None = None
    secret: SecretStr | None = None
    headers: dict[str, str] = {}
    command: list[str] | None = None
    path: str | None = None
    timeout: Duration = timedelta(seconds=10)
    max_attempts: int = Field(default=40, ge=1, le=1000)
    max_age: Duration = timedelta(days=3)
    ordering: Literal["resource", "none"] = "resource"

    @field_validator("command", mode="before")
    @classmethod
    def _check_command(cls, value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(
                "must be a list of strings, the program and then its arguments, "
                'e.g. command = ["/usr/local/bin/handler", "--flag"]'
            )
        return value

    @field_validator("types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError(
                "an empty pattern matches no event type; remove it, or write "
                "a type or a pattern such as 'invoice.*'"
            )
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= MAX_TIMEOUT:
            raise ValueError(
                f"invalid timeout {value.total_seconds():g}s: it must be more than "
                "0 and at most 1h, e.g. '10s'"
            )
        return value

    @field_validator("max_age")
    @classmethod
    def _check_max_age(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("invalid max_age 0s: it must be more than 0, e.g. '3d'")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> SinkConfig:
        given = {
            key
            for key in ("url", "secret", "command", "path")
            if getattr(self, key) is not None
        } | ({"headers"} if self.headers else set())
        stray = sorted(given - KIND_KEYS[self.kind])
        if stray:
            raise ValueError(
                f"{', '.join(stray)}: not used by sinks of kind {self.kind}; remove it "
                "or change kind"
            )
        if self.kind == "http":
            _check_http(self.url, self.secret)
        elif self.kind == "command" and not self.command:
            raise ValueError('a command sink needs command = ["/path/to/program", ...]')
        elif self.kind == "jsonl" and not self.path:
            raise ValueError('path: required for a jsonl sink, e.g. "/var/lib/x.jsonl"')
        return self


def _check_http(url: str | None, secret: SecretStr | None) -> None:
    # The URL is not echoed: webhook URLs often carry a token.
    example = "e.g. 'https://app.example/hooks/syncd'"
    try:
        parts = urlsplit(url or "")
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError as exc:
        raise ValueError(f"url: invalid URL ({exc}); write it as {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        scheme = parts.scheme[:10] or "no scheme"
        raise ValueError(
            f"url: an http sink needs an http or https URL with a host, {example} "
            f"(got {scheme!r})"
        )
    if secret is None:
        return
    text = secret.get_secret_value()
    try:
        base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "secret: not a Standard Webhooks secret: write 'whsec_' followed "
            "by base64, e.g. from: python3 -c \"import base64,os; print('whsec_'"
            ' + base64.b64encode(os.urandom(24)).decode())"'
        ) from None
