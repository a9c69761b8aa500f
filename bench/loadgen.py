"""A closed-loop HTTP/1.1 load generator for signed Stripe webhooks.

Each of ``connections`` keep-alive connections sends one POST, waits for the
whole response, and sends the next, so a request is counted only once the
server has responded to it (for syncd: after its commit). Every request carries a
distinct event signed with the current time, as Stripe sends them. The client
writes requests by hand on asyncio streams to keep its own CPU cost per
request low, because it shares the machine's cores with the server.

Run it as ``python bench/loadgen.py PORT SECONDS CONNECTIONS SECRET``; it
prints one JSON object with requests, errors, seconds and latency quantiles.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import time

PATH = "/webhooks/payments"
WARMUP = 0.5  # seconds of requests sent before counting starts


def signed_request(index: int, secret: bytes, port: int) -> bytes:
    """Return the bytes of one POST carrying a distinct signed Stripe event."""
    created = int(time.time())
    event = {
        "id": f"evt_load{index:012d}{created}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "type": "charge.succeeded",
        "livemode": False,
        "pending_webhooks": 1,
        "data": {
            "object": {
                "id": f"ch_load{index:012d}",
                "object": "charge",
                "amount": 1000 + index % 5000,
                "currency": "usd",
                "status": "succeeded",
                "metadata": {"order": str(index)},
            }
        },
    }
    body = json.dumps(event, indent=2).encode()
    mac = hmac.new(secret, f"{created}.".encode() + body, hashlib.sha256)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Stripe-Signature: t={created},v1={mac.hexdigest()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response and return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


class Counter:
    """Shared counts and latencies of all connections."""

    def __init__(self, secret: bytes, port: int) -> None:
        self.secret = secret
        self.port = port
        self.next_index = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.counting = False

    def new_request(self) -> bytes:
        self.next_index += 1
        return signed_request(self.next_index, self.secret, self.port)


async def connection(counter: Counter, deadline: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", counter.port)
    try:
        while time.perf_counter() < deadline:
            request = counter.new_request()
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            if not counter.counting:
                continue
            counter.latencies.append(time.perf_counter() - started)
            if status != 200:
                counter.errors += 1
    finally:
        writer.close()


async def run(port: int, seconds: float, connections: int, secret: bytes) -> dict:
    counter = Counter(secret, port)
    deadline = time.perf_counter() + WARMUP + seconds
    tasks = [
        asyncio.create_task(connection(counter, deadline)) for _ in range(connections)
    ]
    await asyncio.sleep(WARMUP)
    counter.counting = True
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    return summary(counter.latencies, counter.errors, time.perf_counter() - started)


def summary(latencies: list[float], errors: int, seconds: float) -> dict:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


def main() -> None:
    port, seconds, connections = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    secret = sys.argv[4].encode()
    result = asyncio.run(run(port, seconds, connections, secret))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
