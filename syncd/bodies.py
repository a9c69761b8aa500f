"""Reading webhook bodies within a size limit, decompressing as they stream."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping

from syncd.errors import WebhookError


class BodyTooLargeError(WebhookError):
    """The body, as sent or once inflated, is larger than the limit."""

    status = 413


class UnsupportedEncodingError(WebhookError):
    """The Content-Encoding is not one syncd can decode."""

    status = 415


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
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int
) -> bytes:
    """Return the request body, inflated if compressed, of at most ``limit`` bytes.

    Raises BodyTooLargeError as soon as the limit is passed, without reading
    or inflating the rest. A compressed body is inflated in steps of at most
    the remaining allowance, so a small bomb never fills memory.
    """
    declared = headers.get("content-length", "")
    encoding = headers.get("content-encoding", "").strip().lower()
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"body of {declared} bytes is over the {limit} limit")
    inflater = _decompressor(encoding)

    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        if inflater is not None:
            chunk = _inflate(inflater, chunk, limit - size)
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body is over the {limit} byte limit")
        parts.append(chunk)

    if inflater is not None:
        if not inflater.eof:
            raise WebhookError(f"{encoding} body is truncated")
        if inflater.unused_data:
            raise WebhookError(
                f"{encoding} body has data after the end of its compressed stream; "
                "send one compressed stream"
            )
    return b"".join(parts)


def _inflate(inflater: zlib._Decompress, data: bytes, allowance: int) -> bytes:
    try:
        output = inflater.decompress(data, allowance + 1)
    except zlib.error as exc:
        raise WebhookError(f"body cannot be decompressed: {exc}") from None
    if len(output) > allowance or inflater.unconsumed_tail:
        raise BodyTooLargeError("decompressed body is over the size limit")
    return output
