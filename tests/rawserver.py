"""Raw TCP servers for what aiohttp's web server refuses to send: broken framing, huge or
non-UTF-8 headers, resets before any response, trouble in the TLS handshake.

Usable without pytest (benchmarks, scripts), like httpserver:

    from rawserver import RawServer, TLS_RESET     # with tests/ on sys.path
    with RawServer("127.0.0.4") as srv:            # HTTP routes, chosen by the request path
        print(srv.url("/broken-chunked"))
    with RawServer("127.0.0.5", on_connect=TLS_RESET) as srv:   # one behaviour per port
        print(srv.url("/", scheme="https"))

HTTP routes (the request head is read first, then):
    /broken-chunked          chunked body whose second chunk-size line is not hex
    /huge-header             one 1 MiB header line
    /many-headers            1 MiB of headers as 1,024 lines of 1 KiB
    /slow-headers            the status line, then one header byte every 0.2 s, forever
    /slow-chunk-size         chunked headers, then a chunk-size line one digit every 0.2 s
    /reset                   RST before any byte of a response
    /close                   a clean close (FIN) before any byte of a response
    /garbage-status          a status line that is not HTTP
    /latin1-content-type     Content-Type with a byte that is not UTF-8, then a small body
    /latin1-location         a 302 whose Location holds a byte that is not UTF-8
    anything else            404
on_connect behaviours (before any request is read; the port speaks nothing else):
    TLS_RESET                reads the ClientHello, answers with RST
    TLS_HANG                 reads the ClientHello, never answers
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Self

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HEAD_LIMIT = 64 * 1024  # a request head longer than this is not ours
DRIP_INTERVAL = 0.2  # s between dripped bytes: well inside any read timeout the tests use
MiB = 1024 * 1024


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until_client_leaves(reader: asyncio.StreamReader) -> None:
    """Keep the connection open until the client closes it: only the client's parser ends it."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(64 * 1024):
            pass


async def send_then_wait(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    with contextlib.suppress(ConnectionError):  # the client may give up mid-way
        writer.write(data)
        await writer.drain()
        await until_client_leaves(reader)


async def send_then_close(writer: asyncio.StreamWriter, response: bytes) -> None:
    """A complete response on a connection that serves nothing more (one request each)."""
    head, sep, body = response.partition(b"\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        writer.write(head + b"\r\nConnection: close" + sep + body)
        await writer.drain()
    writer.close()


async def drip(writer: asyncio.StreamWriter, head: bytes, byte: bytes) -> None:
    """`head`, then `byte` every DRIP_INTERVAL until the client goes away."""
    with contextlib.suppress(ConnectionError):
        writer.write(head)
        while True:
            await writer.drain()
            await asyncio.sleep(DRIP_INTERVAL)
            if writer.is_closing():
                return
            writer.write(byte)


_CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


async def route(path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one request head whose path is `path` (see the module docstring)."""
    if path == "/broken-chunked":
        await send_then_wait(reader, writer, _CHUNKED + b"5\r\nhello\r\nzz-not-hex\r\nmore\r\n")
    elif path == "/huge-header":
        await send_then_wait(
            reader, writer, b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n"
        )
    elif path == "/many-headers":
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(1024))
        await send_then_wait(reader, writer, b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")
    elif path == "/slow-headers":
        await drip(writer, b"HTTP/1.1 200 OK\r\nX-Slow: ", b"s")
    elif path == "/slow-chunk-size":
        await drip(writer, _CHUNKED, b"0")
    elif path == "/reset":
        reset(writer)
    elif path == "/close":
        writer.close()
    elif path == "/garbage-status":
        await send_then_wait(reader, writer, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    elif path == "/latin1-content-type":
        await send_then_close(
            writer,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/h\xe9ml; "
            b"charset=\xff\r\nContent-Length: 2\r\n\r\nok",
        )
    elif path == "/latin1-location":
        await send_then_close(
            writer, b"HTTP/1.1 302 Found\r\nLocation: /caf\xe9?q=\xff\r\nContent-Length: 0\r\n\r\n"
        )
    else:
        await send_then_close(writer, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


async def http_routes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one request head and answer it by its path."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    path = parts[1].decode("latin-1").split("?", 1)[0] if len(parts) > 1 else "/"
    await route(path, reader, writer)


async def _tls_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await reader.read(1)  # the ClientHello has started: the client is mid-handshake
    reset(writer)


async def _tls_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await until_client_leaves(reader)


TLS_RESET: Behaviour = _tls_reset
TLS_HANG: Behaviour = _tls_hang


class RawServer:
    """An asyncio socket server in a background thread: `start()`/`stop()` or `with`."""

    def __init__(self, host: str = "127.0.0.1", *, on_connect: Behaviour | None = None) -> None:
        self.host = host
        self.port = 0
        self.behaviour = on_connect or http_routes
        self.connections = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"rawserver-{self.host}", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=HEAD_LIMIT, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with self._lock:
            self.connections += 1
        try:
            await self.behaviour(reader, writer)
        except asyncio.CancelledError:  # the server is stopping
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/", *, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"
