"""--proxy and --cookies on both engines, against a local proxy (tests/proxyserver.py: HTTP,
CONNECT, SOCKS5, SOCKS4a) and the local test server: every request goes through the proxy with
its login, the password is in no record, log line or error, and a job's cookie jar is its own."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from httpserver import HTTPServer, server_tls_context
from proxyserver import ProxyServer

from crawler import worker_runtime
from crawler.engines import FetchConfig, make_engine
from crawler.engines.base import short_detail
from crawler.engines.proxy import parse_proxy
from crawler.options import CrawlOptions
from crawler.records import ErrorClass, FetchResult
from crawler.settings import Settings, load_settings
from crawler.worker_runtime import WorkerRuntime

both = pytest.mark.parametrize("mode", ["async", "threads"])
SECRET = "s3cr3t-Pw"
T = TypeVar("T")


def config(**overrides: Any) -> FetchConfig:
    """Short timeouts; only the target network 127.0.0.5 is let through the guard (the proxy
    on 127.0.0.1 needs no allowance: the user named it)."""
    base: dict[str, Any] = {"concurrency": 8, "timeout": 3.0, "connect_timeout": 1.0,
                            "read_timeout": 1.0, "allowed_networks": ("127.0.0.5/32",)}
    return FetchConfig(**(base | overrides))


async def fetch_all(mode: str, urls: list[str], **overrides: Any) -> list[FetchResult]:
    async with make_engine(mode, config(**overrides)) as engine:
        return [await engine.fetch(url) for url in urls]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    """A proxy on 127.0.0.1 that wants the login user:SECRET."""
    with ProxyServer(auth=("user", SECRET)) as server:
        yield server


@pytest.fixture
def site(make_http_server: Any) -> HTTPServer:
    """The target on 127.0.0.5, with a login page that sets a cookie and one that sets it on
    a redirect."""
    srv: HTTPServer = make_http_server("127.0.0.5")
    srv.set_route("/login", "in", headers={"Set-Cookie": "sid=abc; Path=/"})
    srv.set_route("/login-redirect", "", status=302,
                  headers={"Set-Cookie": "hop=1; Path=/", "Location": "/ok"})
    return srv


# --- through the proxy ------------------------------------------------------------------------


@both
async def test_every_request_and_hop_goes_through_the_http_proxy_with_its_login(
    mode: str, proxy: ProxyServer, site: HTTPServer
) -> None:
    urls = [site.url("/ok"), site.url("/redirect/2")]
    results = await fetch_all(mode, urls, proxy=proxy.url("http", "user", SECRET))
    assert [(r.status, r.error, r.redirects) for r in results] == [(200, None, 0), (200, None, 2)]
    # the proxy forwarded each request and hop, each with the login...
    assert [f.target for f in proxy.forwarded] == [
        site.url(p) for p in ("/ok", "/redirect/2", "/redirect/1", "/redirect/0")]
    assert {f.proxy_authorization for f in proxy.forwarded} == {basic("user", SECRET)}
    # ...and the target saw only the proxy's connections, never the proxy's login
    assert {a.client[1] for a in site.arrivals()} <= proxy.local_ports()
    assert all("Proxy-Authorization" not in a.headers for a in site.arrivals())


@both
async def test_an_https_target_is_tunnelled_with_connect(
    mode: str, proxy: ProxyServer, https_server: HTTPServer
) -> None:
    [res] = await fetch_all(mode, [https_server.url("/ok")], verify_tls=False,
                            allowed_networks=("127.0.0.1/32",),
                            proxy=proxy.url("http", "user", SECRET))
    assert (res.status, res.error) == (200, None)
    [fwd] = proxy.forwarded
    assert (fwd.kind, fwd.port, fwd.proxy_authorization) == (
        "connect", https_server.port, basic("user", SECRET))


@both
async def test_an_https_proxy_speaks_tls_to_the_proxy(
    mode: str, site: HTTPServer, tls_cert: tuple[Path, Path]
) -> None:
    with ProxyServer(auth=("user", SECRET), ssl_context=server_tls_context(*tls_cert)) as tls:
        url = tls.url("https", "user", SECRET)
        [res] = await fetch_all(mode, [site.url("/ok")], proxy=url, verify_tls=False)
        assert (res.status, [f.kind for f in tls.forwarded]) == (200, ["http"])
        # verified (the default), the proxy's self-signed certificate is refused
        [res] = await fetch_all(mode, [site.url("/ok")], proxy=url)
        assert res.error is ErrorClass.TLS, res.error_detail
        assert SECRET not in (res.error_detail or "") and len(tls.forwarded) == 1


@both
@pytest.mark.parametrize(("scheme", "password"), [
    pytest.param("socks5", SECRET, id="socks5-login"),
    pytest.param("socks5h", SECRET, id="socks5h-login"),
    pytest.param("socks4", None, id="socks4-user-id"),
])
async def test_socks_proxies(mode: str, scheme: str, password: str | None,
                             proxy: ProxyServer, site: HTTPServer) -> None:
    results = await fetch_all(mode, [site.url("/ok"), site.url("/redirect/1")],
                              proxy=proxy.url(scheme, "user", password))
    assert [(r.status, r.error) for r in results] == [(200, None), (200, None)]
    kind = "socks4" if scheme == "socks4" else "socks5"
    assert {f.kind for f in proxy.forwarded} == {kind}
    assert {(f.host, f.port) for f in proxy.forwarded} == {("127.0.0.5", site.port)}
    assert {f.proxy_authorization for f in proxy.forwarded} == {
        "user" if password is None else f"user:{SECRET}"}
    assert {a.client[1] for a in site.arrivals()} <= proxy.local_ports()


@both
async def test_an_open_socks5_proxy_needs_no_login(mode: str, site: HTTPServer) -> None:
    with ProxyServer() as open_proxy:
        [res] = await fetch_all(mode, [site.url("/ok")], proxy=open_proxy.url("socks5"))
        assert (res.status, [f.kind for f in open_proxy.forwarded]) == (200, ["socks5"])


@both
async def test_an_ip_literal_target_is_still_checked_behind_a_proxy(
    mode: str, proxy: ProxyServer, make_http_server: Any
) -> None:
    other = make_http_server("127.0.0.6")  # not in allowed_networks
    for scheme in ("http", "socks5"):
        [res] = await fetch_all(mode, [other.url("/ok")], proxy=proxy.url(scheme, "user", SECRET))
        assert res.error is ErrorClass.BLOCKED_ADDRESS
    assert proxy.forwarded == [] and other.arrivals() == []


# --- failures, masked ---------------------------------------------------------------------------


@both
@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_an_unreachable_proxy_is_a_connection_error_that_never_shows_the_password(
    mode: str, scheme: str, site: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"{scheme}://user:{SECRET}@127.0.0.1:{closed_port()}"
    [res] = await fetch_all(mode, [site.url("/ok")], proxy=dead)
    assert res.error is ErrorClass.CONNECTION and res.error_detail
    assert SECRET not in res.error_detail
    assert SECRET not in caplog.text
    assert site.arrivals() == []


@both
async def test_a_wrong_login_is_a_407_for_http_and_a_connection_error_when_tunnelling(
    mode: str, proxy: ProxyServer, site: HTTPServer, https_server: HTTPServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = proxy.url("http", "user", "wrong-" + SECRET)
    plain, tunnelled = await fetch_all(mode, [site.url("/ok"), https_server.url("/ok")],
                                       proxy=wrong, verify_tls=False,
                                       allowed_networks=("127.0.0.0/8",))
    assert (plain.status, plain.error) == (407, None)
    assert tunnelled.error is ErrorClass.CONNECTION and "407" in (tunnelled.error_detail or "")
    [socks] = await fetch_all(mode, [site.url("/ok")],
                              proxy=proxy.url("socks5", "user", "wrong-" + SECRET))
    assert socks.error is ErrorClass.CONNECTION
    for res in (plain, tunnelled, socks):
        assert SECRET not in (res.error_detail or "")
    assert SECRET not in caplog.text
    assert site.arrivals() == [] and https_server.arrivals() == []


def test_short_detail_masks_a_password_before_cutting() -> None:
    detail = short_detail(f"ProxyError: http://user:{SECRET}@127.0.0.1:9 " + "x" * 300)
    assert SECRET not in detail and "user:***@" in detail and len(detail) <= 200


# --- cookies --------------------------------------------------------------------------------------


def cookies_seen(site: HTTPServer) -> list[tuple[str, str | None]]:
    """(path, Cookie header) per arrival, the cookies sorted (the engines order them apart)."""
    def cookies(value: str | None) -> str | None:
        return None if value is None else "; ".join(sorted(value.split("; ")))
    return [(a.path, cookies(a.headers.get("Cookie"))) for a in site.arrivals()]


@both
async def test_with_cookies_a_jobs_later_requests_carry_them(mode: str, site: HTTPServer) -> None:
    await fetch_all(mode, [site.url("/login"), site.url("/ok"), site.url("/login-redirect")],
                    cookies=True)
    assert cookies_seen(site) == [
        ("/login", None), ("/ok", "sid=abc"), ("/login-redirect", "sid=abc"),
        ("/ok", "hop=1; sid=abc"),  # set on a redirect, sent on its next hop
    ]


@both
async def test_without_cookies_none_is_ever_sent(mode: str, site: HTTPServer) -> None:
    await fetch_all(mode, [site.url("/login"), site.url("/ok"), site.url("/login-redirect")])
    assert [cookie for _, cookie in cookies_seen(site)] == [None] * 4


@both
async def test_cookies_work_through_a_proxy_and_across_concurrent_requests(
    mode: str, proxy: ProxyServer, site: HTTPServer
) -> None:
    async with make_engine(mode, config(cookies=True, proxy=proxy.url(
            "socks5", "user", SECRET))) as engine:
        await engine.fetch(site.url("/login"))
        await asyncio.gather(*(engine.fetch(site.url(f"/page/{i}")) for i in range(20)))
    assert {cookie for path, cookie in cookies_seen(site) if path != "/login"} == {"sid=abc"}


@both
async def test_the_jobs_own_cookie_header_is_kept_beside_the_jar(
    mode: str, site: HTTPServer
) -> None:
    await fetch_all(mode, [site.url("/login"), site.url("/ok")], cookies=True,
                    headers=(("Cookie", "mine=1"),))
    assert cookies_seen(site)[-1] == ("/ok", "mine=1; sid=abc")


# --- one worker process, several jobs -------------------------------------------------------------


def on_loop(runtime: WorkerRuntime, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, runtime.loop).result(10)


@pytest.fixture
def runtime(redis_url: str) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime(Settings(redis_url=redis_url, concurrency=8))
    yield rt
    rt.close()


@both
def test_jobs_in_one_worker_keep_their_own_cookie_jars(
    mode: str, runtime: WorkerRuntime, site: HTTPServer
) -> None:
    with_cookies = CrawlOptions(mode=mode, cookies=True, allowed_networks=["127.0.0.5/32"])

    async def fetch(job: str, path: str, options: CrawlOptions = with_cookies) -> None:
        engine = await runtime._engine(options, job)
        await engine.fetch(site.url(path))

    on_loop(runtime, fetch("jobA", "/login"))
    on_loop(runtime, fetch("jobB", "/ok"))
    on_loop(runtime, fetch("jobA", "/ok"))
    assert cookies_seen(site) == [("/login", None), ("/ok", None), ("/ok", "sid=abc")]
    # jobs without cookies share one engine, as before
    plain = CrawlOptions(mode=mode, allowed_networks=["127.0.0.5/32"])
    assert on_loop(runtime, runtime._engine(plain, "jobC")) is on_loop(
        runtime, runtime._engine(plain, "jobD"))

    # When job A is over here, its engine (and jar) is closed and dropped
    async def forget() -> None:
        runtime._forget_job("jobA")
        await asyncio.gather(*runtime._closing)

    on_loop(runtime, forget())
    assert not [key for key in runtime.engines if key[1].cookie_scope == "jobA"]
    assert [key[1].cookie_scope for key in runtime.engines if key[1].cookies] == ["jobB"]


def test_a_worker_keeps_at_most_cookie_jars_jobs_jars(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_runtime, "COOKIE_JARS", 2)
    options = CrawlOptions(cookies=True)
    for job in ("j1", "j2", "j1", "j3"):  # j1 used again: j2 is the least recently used
        runtime.robots[job] = None  # as _robots() leaves it for a job that ignores robots.txt
        on_loop(runtime, runtime._engine(options, job))

    async def closed() -> None:
        await asyncio.gather(*runtime._closing)

    on_loop(runtime, closed())
    assert [key[1].cookie_scope for key in runtime.engines] == ["j1", "j3"]
    # and j2's robots.txt cache (it fetched through the closed engine) went with it
    assert "j2" not in runtime.robots and "j1" in runtime.robots


# --- options, settings, command line -------------------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    pytest.param(f"ftp://u:{SECRET}@127.0.0.1:21", "unsupported proxy scheme 'ftp'", id="scheme"),
    pytest.param("127.0.0.1:3128", "unsupported proxy scheme", id="no-scheme"),
    pytest.param(f"http://u:{SECRET}@:3128", "no host", id="no-host"),
    pytest.param(f"http://u:{SECRET}@proxy.example", "needs a port", id="no-port"),
    pytest.param(f"http://u:{SECRET}@proxy.example:99999", "needs a port", id="bad-port"),
    pytest.param("http://proxy.example:3128/path", "no path", id="path"),
    pytest.param(f"socks4://u:{SECRET}@proxy.example:1080", "no password", id="socks4-pw"),
    pytest.param("http://proxy example:3128", "spaces", id="space"),
])
def test_a_bad_proxy_is_one_line_that_never_shows_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_proxy(url)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(Exception) as cfg:
        load_settings(None, proxy=url)
    message = str(cfg.value)
    assert message.startswith("invalid setting proxy") and problem in message
    assert SECRET not in message and len(message.splitlines()) == 1


def test_proxy_forms_and_the_mask() -> None:
    p = parse_proxy("SOCKS5://us%40er:p%3Ass@[::1]:1080")
    assert (p.kind, p.host, p.port, p.username, p.password) == (
        "socks5h", "::1", 1080, "us@er", "p:ss")
    assert p.url() == "socks5h://us%40er:p%3Ass@[::1]:1080"
    assert p.masked() == "socks5h://us%40er:***@[::1]:1080"
    assert parse_proxy("socks4://proxy:1080").kind == "socks4a"
    assert parse_proxy("http://proxy:3128/").url() == "http://proxy:3128"


def test_settings_take_proxy_and_cookies_from_the_environment_and_mask_the_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRAWLER_PROXY", f"http://user:{SECRET}@proxy.example:3128")
    monkeypatch.setenv("CRAWLER_COOKIES", "true")
    settings = load_settings(None)
    assert settings.cookies and settings.proxy and SECRET in settings.proxy
    config_ = settings.fetch_config()
    assert (config_.proxy, config_.cookies, config_.cookie_scope) == (settings.proxy, True, "")
    for shown in (repr(settings), str(settings), repr(config_),
                  repr(CrawlOptions(proxy=settings.proxy))):
        assert SECRET not in shown
    assert "http://user:***@proxy.example:3128" in repr(settings)
    monkeypatch.setenv("CRAWLER_PROXY", "")
    assert load_settings(None).proxy is None


def run_cli(args: list[str], *, stdin: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    return subprocess.run([sys.executable, "-m", "crawler", *args], input=stdin,
                          capture_output=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", ["crawl", "submit"])
def test_a_bad_proxy_flag_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    proc = run_cli([command, "-", "--proxy", f"ftp://user:{SECRET}@127.0.0.1:21"],
                   stdin=b"http://127.0.0.1:9/\n", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "invalid setting proxy: unsupported proxy scheme 'ftp'" in err
    assert len(err.strip().splitlines()) == 1 and SECRET not in err


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_crawl_with_proxy_and_cookies_end_to_end(
    mode: str, proxy: ProxyServer, site: HTTPServer, tmp_path: Path
) -> None:
    urls = [site.url("/login-redirect"), site.url("/page/1")]
    proc = run_cli(["crawl", "-", "--mode", mode, "--proxy", proxy.url("http", "user", SECRET),
                    "--cookies", "--allow-network", "127.0.0.5/32", "--log-level", "DEBUG",
                    "--no-progress"], stdin="\n".join(urls).encode(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    records = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert sorted((r["url"], r["status"]) for r in records) == sorted((u, 200) for u in urls)
    assert {f.target for f in proxy.forwarded} >= {*urls, site.url("/ok")}
    assert ("/ok", "hop=1") in cookies_seen(site)
    assert SECRET not in proc.stderr.decode() and SECRET not in proc.stdout.decode()

    # And a proxy that refuses: a connection error per URL, the password nowhere
    dead = f"http://user:{SECRET}@127.0.0.1:{closed_port()}"
    proc = run_cli(["crawl", "-", "--mode", mode, "--proxy", dead, "--retries", "0",
                    "--allow-network", "127.0.0.5/32", "--log-level", "DEBUG", "--no-progress"],
                   stdin=urls[1].encode(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    [record] = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert record["error"] == "connection"
    assert SECRET not in proc.stderr.decode() and SECRET not in proc.stdout.decode()
