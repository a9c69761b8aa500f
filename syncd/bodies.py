"""Reading webhook bodies within a size and time limit, decompressing as they stream."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping

from syncd.errors import WebhookError


class BodyTooLargeError(WebhookError):
    """The body, as sent or once inflated, is larger than the limit."""

    status = 413


def _too_large(subject: str, limit: int) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"{subject} is over the {limit}-byte limit; raise [daemon] max_body to "
        "accept it"
    )


class UnsupportedEncodingError(WebhookError):
    """The Content-Encoding or Content-Type is not one syncd can decode."""

    status = 415


class BodyTimeoutError(WebhookError):
    """The client did not send the whole body within the read timeout."""

    status = 408


class BuffersFullError(WebhookError):
    """Request bodies in memory have reached ``[daemon] max_buffered``."""

    status = 503


class BufferBudget:
    """Bytes of request bodies that all requests together may hold in memory.

    Used from the event loop's thread only, so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes; raise BuffersFullError past the limit."""
        if self.used + size > self.limit:
            raise BuffersFullError(
                f"request bodies in memory would exceed the {self.limit}-byte "
                "max_buffered limit; retry later"
            )
        self.used += size

    def release(self, size: int) -> None:
        """Return ``size`` bytes once the body that held them is dropped."""
        self.used = max(0, self.used - size)


def check_content_type(headers: Mapping[str, str]) -> None:
    """Raise UnsupportedEncodingError unless the body is declared as UTF-8 JSON.

    A missing Content-Type is accepted, because the signature and the JSON
    parser still check the body. ``application/json`` and any
    ``application/*+json`` type pass; a ``charset`` other than UTF-8 does not.
    """
    value = headers.get("content-type")
    if value is None:
        return
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedEncodingError(
            f"unsupported Content-Type {value[:60]!r}; configure the provider to "
            "send application/json"
        )
    for parameter in parameters.split(";"):
        name, _, charset = parameter.partition("=")
        if name.strip().lower() != "charset":
            continue
        charset = charset.strip().strip('"').lower()
        if charset not in ("utf-8", "utf8"):
            raise UnsupportedEncodingError(
                f"unsupported charset {charset[:30]!r} in Content-Type; "
                "send application/json in UTF-8"
            )


def _decompressor(encoding: str) -> zlib._Decompress | None:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise UnsupportedEncodingError(
        f"unsupported Content-Encoding {encoding[:40]!r}; send identity, gzip or "
        "deflate"
    )


async def read_body(
    headers: Mapping[str, str],
    chunks: AsyncIterator[bytes],
    limit: int,
    timeout: float | None = None,
    budget: BufferBudget | None = None,
) -> bytes:
    """Return the request body, inflated if compressed, of at most ``limit`` bytes.

    Raises BodyTooLargeError as soon as the limit is passed, without reading
    or inflating the rest. A compressed body is inflated in steps of at most
    the remaining allowance, so a small bomb never fills memory. Raises
    BodyTimeoutError when the whole body takes longer than ``timeout`` seconds.
    With ``budget``, each chunk is counted against it as it arrives; on
    success the caller releases ``len(body)`` once done with the body.
    """
    declared = headers.get("content-length", "")
    encoding = headers.get("content-encoding", "").strip().lower()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"body of {declared} bytes", limit)
    inflater = _decompressor(encoding)
    budget = budget or BufferBudget(limit)
    parts: list[bytes] = []
    try:
        await _read_with_timeout(
            chunks, inflater, encoding, limit, parts, budget, timeout
        )
    except BaseException:
        budget.release(sum(len(part) for part in parts))
        raise
    return b"".join(parts)


async def _read_with_timeout(
    chunks: AsyncIterator[bytes],
    inflater: zlib._Decompress | None,
    encoding: str,
    limit: int,
    parts: list[bytes],
    budget: BufferBudget,
    timeout: float | None,
) -> None:
    try:
        async with asyncio.timeout(timeout):
            await _read_chunks(chunks, inflater, encoding, limit, parts, budget)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the body did not arrive within the {timeout:g}s read timeout; "
            "send it faster or raise [daemon] read_timeout"
        ) from None


async def _read_chunks(
    chunks: AsyncIterator[bytes],
    inflater: zlib._Decompress | None,
    encoding: str,
    limit: int,
    parts: list[bytes],
    budget: BufferBudget,
) -> None:
    size = 0
    async for chunk in chunks:
        if inflater is not None:
            chunk = _inflate(inflater, chunk, limit - size, limit)
        size += len(chunk)
        if size > limit:
            raise _too_large("body", limit)
        budget.take(len(chunk))
        parts.append(chunk)

    if inflater is not None:
        if not inflater.eof:
            raise WebhookError(f"{encoding} body is truncated")
        if inflater.unused_data:
            raise WebhookError(
                f"{encoding} body has data after the end of its compressed stream; "
                "send one compressed stream"
            )


def _inflate(
    inflater: zlib._Decompress, data: bytes, allowance: int, limit: int
) -> bytes:
    """Inflate ``data``; raise BodyTooLargeError past ``allowance`` more bytes."""
    try:
        output = inflater.decompress(data, allowance + 1)
    except zlib.error as exc:
        raise WebhookError(f"body cannot be decompressed: {exc}") from None
    if len(output) > allowance or inflater.unconsumed_tail:
        raise _too_large("decompressed body", limit)
    return output
