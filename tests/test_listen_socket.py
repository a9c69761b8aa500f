"""The webhook socket that ``syncd run`` binds before uvicorn serves on it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from syncd.daemon import ListenError, bind_listen_socket


async def _accepted_nodelay(sock: socket.socket) -> int:
    """Serve on ``sock`` as uvicorn does and return TCP_NODELAY of a connection."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            connection = transport.get_extra_info("socket")
            accepted.set_result(
                connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            )
            transport.close()

    sock.listen()
    server = await loop.create_server(Probe, sock=sock)
    host, port = sock.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_accepted_connections_send_without_delay() -> None:
    """Responses are not held back by Nagle's algorithm (about 40 ms each)."""
    sock = bind_listen_socket("127.0.0.1:0")
    assert asyncio.run(_accepted_nodelay(sock)) != 0


def test_ipv6_connections_send_without_delay() -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        sock = bind_listen_socket("[::1]:0")
    except ListenError:
        pytest.skip("this machine has no IPv6 loopback address")
    assert asyncio.run(_accepted_nodelay(sock)) != 0


def test_port_in_use_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=r"\[daemon\] listen"):
            bind_listen_socket(f"127.0.0.1:{port}")
