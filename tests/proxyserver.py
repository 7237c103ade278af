"""A tiny forward proxy for tests: HTTP (absolute-form requests and CONNECT; over TLS too,
given a context), SOCKS5 and SOCKS4a on one port (told apart by the first byte), in a
background thread.

    from proxyserver import ProxyServer          # with tests/ on sys.path
    with ProxyServer(auth=("user", "secret")) as proxy:
        proxy.url("http", "user", "secret")      # http://user:secret@127.0.0.1:PORT
        proxy.forwarded                          # what it forwarded, in order

With `auth`, an HTTP request or CONNECT without the right Proxy-Authorization gets a 407, a
SOCKS5 client must log in with that user name and password (RFC 1929), and a SOCKS4 request
must carry that user id. Plain HTTP requests are forwarded one per client connection (the
proxy asks the target for `Connection: close`); tunnels are piped until either side closes.
Every forward records the target, the proxy's own local port towards it (what the target sees
as the client), and the Proxy-Authorization header it came with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Self

HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Forward:
    kind: str  # "http", "connect", "socks5", "socks4"
    host: str
    port: int
    target: str  # the absolute URL of an HTTP request, else host:port
    proxy_authorization: str | None  # the header as sent (HTTP), "user:password" (SOCKS)
    local_port: int  # the proxy's side of its connection to the target


class ProxyServer:
    """The proxy on one loopback address and a free port: `start()`/`stop()` or `with`."""

    def __init__(self, host: str = "127.0.0.1", *, auth: tuple[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = 0
        self.auth = auth
        self.ssl_context = ssl_context  # an https:// proxy: TLS to the proxy itself
        self.forwarded: list[Forward] = []
        self.refused: list[str] = []  # why a client was turned away (407, bad SOCKS login)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxyserver",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0,
                                                  ssl=self.ssl_context)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        writers = list(self._writers)
        for writer in writers:
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Every connection, to clients and to targets, closed before the loop goes: a transport
        # left closing would warn (ResourceWarning) in whatever test runs when it is collected.
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

    async def _connect(self, host: str, port: int
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a target, tracked so that `_stop` closes it."""
        reader, writer = await asyncio.open_connection(host, port)
        self._writers.add(writer)
        return reader, writer

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- for tests ----------------------------------------------------------------------

    def url(self, scheme: str = "http", user: str | None = None,
            password: str | None = None) -> str:
        auth = "" if user is None else user + ("" if password is None else f":{password}") + "@"
        return f"{scheme}://{auth}{self.host}:{self.port}"

    def local_ports(self) -> set[int]:
        with self._lock:
            return {f.local_port for f in self.forwarded}

    def _record(self, forward: Forward) -> None:
        with self._lock:
            self.forwarded.append(forward)

    def _refuse(self, why: str) -> None:
        with self._lock:
            self.refused.append(why)

    # --- the protocols ------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            first = await reader.readexactly(1)
            if first == b"\x05":
                await self._socks5(reader, writer)
            elif first == b"\x04":
                await self._socks4(reader, writer)
            else:
                await self._http(first, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _basic_ok(self, header: str | None) -> bool:
        if self.auth is None:
            return True
        expected = base64.b64encode(":".join(self.auth).encode()).decode()
        return header == f"Basic {expected}"

    async def _http(self, first: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        head = first + await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ", 2)
        headers = [tuple(h.split(":", 1)) for h in lines if ":" in h]
        auth = next((v.strip() for k, v in headers if k.lower() == "proxy-authorization"), None)
        if not self._basic_ok(auth):
            self._refuse(f"407 {method} {target}")
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream_r, upstream_w = await self._connect(host.strip("[]"), int(port))
            self._record(Forward("connect", host, int(port), target, auth, _port(upstream_w)))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe(reader, writer, upstream_r, upstream_w)
            return
        # absolute-form: GET http://host:port/path HTTP/1.1
        rest = target.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        kept = [f"{k}:{v}" for k, v in headers
                if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")]
        upstream_r, upstream_w = await self._connect(host.strip("[]"), int(port))
        self._record(Forward("http", host, int(port), target, auth, _port(upstream_w)))
        request = "\r\n".join([f"{method} /{path} {version}", *kept, "Connection: close"])
        upstream_w.write(request.encode("latin-1") + b"\r\n\r\n" + body)
        await upstream_w.drain()
        await _pipe(reader, writer, upstream_r, upstream_w)

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        methods = await reader.readexactly((await reader.readexactly(1))[0])
        login = None
        if self.auth is None and 0 in methods:
            writer.write(b"\x05\x00")
        elif self.auth is not None and 2 in methods:
            writer.write(b"\x05\x02")
            await writer.drain()
            await reader.readexactly(1)  # subnegotiation version 1
            user = await reader.readexactly((await reader.readexactly(1))[0])
            password = await reader.readexactly((await reader.readexactly(1))[0])
            login = f"{user.decode()}:{password.decode()}"
            if (user.decode(), password.decode()) != self.auth:
                self._refuse("socks5 login")
                writer.write(b"\x01\x01")
                await writer.drain()
                return
            writer.write(b"\x01\x00")
        else:
            self._refuse("socks5 method")
            writer.write(b"\x05\xff")
            await writer.drain()
            return
        _ver, _cmd, _rsv, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        else:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        upstream_r, upstream_w = await self._connect(host, port)
        self._record(Forward("socks5", host, port, f"{host}:{port}", login, _port(upstream_w)))
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
        await writer.drain()
        await _pipe(reader, writer, upstream_r, upstream_w)

    async def _socks4(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _cmd, port_hi, port_lo, *ip = await reader.readexactly(7)
        port = port_hi * 256 + port_lo
        user = (await reader.readuntil(b"\x00"))[:-1].decode()
        host = ".".join(map(str, ip))
        if ip[:3] == [0, 0, 0] and ip[3] != 0:  # SOCKS4a: the name follows
            host = (await reader.readuntil(b"\x00"))[:-1].decode()
        if self.auth is not None and user != self.auth[0]:
            self._refuse("socks4 user")
            writer.write(b"\x00\x5d" + bytes(6))
            await writer.drain()
            return
        upstream_r, upstream_w = await self._connect(host, port)
        self._record(Forward("socks4", host, port, f"{host}:{port}", user or None,
                             _port(upstream_w)))
        writer.write(b"\x00\x5a" + bytes(6))
        await writer.drain()
        await _pipe(reader, writer, upstream_r, upstream_w)


def _port(writer: asyncio.StreamWriter) -> int:
    return int(writer.get_extra_info("sockname")[1])


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


async def _pipe(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                upstream_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter) -> None:
    """Both directions until the target is done (then the client connection closes too)."""
    to_target = asyncio.create_task(_copy(client_r, upstream_w))
    try:
        await _copy(upstream_r, client_w)
    finally:
        to_target.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await to_target
        upstream_w.close()
