"""The local static site the benchmark crawls: generated pages, served on 127.0.0.1 only.

nginx (one worker, keep-alive on, no access log) when it is installed; else an aiohttp static
server in its own process (`python -m bench.site serve DIR PORT`), so the server never shares
a process, or a GIL, with the client being measured.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # never anything but loopback
PAGES_PER_DIR = 1000  # keeps directories small; the path shape of a real site, not one flat dir
LINKS_PER_PAGE = 8
START_TIMEOUT = 10.0  # s for a server to accept connections

WORDS = (
    "crawler", "queue", "worker", "redis", "limiter", "engine", "fetch", "record", "export",
    "host", "token", "bucket", "page", "link", "index", "archive", "report", "status", "cache",
    "latency", "socket", "thread", "event", "loop", "batch",
)

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{
    worker_connections 4096;
}}
http {{
    log_format stamp '$msec $connection';
    {access_log}
    default_type text/html;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        root {root};
        location / {{ }}
        # Connections accepted so far (keep-alive check): read by `connections_accepted`.
        location = /__nginx_status {{ stub_status; }}
    }}
}}
"""


def page_path(i: int) -> str:
    return f"/p/{i // PAGES_PER_DIR:03d}/{i:06d}.html"


def render_page(i: int, n: int, rng: random.Random) -> str:
    """A small HTML page (~3 KB): a title, a few paragraphs and links to other pages."""
    links = "\n".join(
        f'<li><a href="{page_path(rng.randrange(n))}">page {j}</a></li>'
        for j in range(LINKS_PER_PAGE)
    )
    paras = "\n".join(
        "<p>" + " ".join(rng.choices(WORDS, k=rng.randint(40, 70))) + "</p>"
        for _ in range(rng.randint(4, 7))
    )
    return (
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Page {i}</title></head>\n"
        f"<body><h1>Page {i}</h1>\n{paras}\n<ul>\n{links}\n</ul>\n</body></html>\n"
    )


def generate(root: Path, n: int, seed: int = 1) -> None:
    """Write pages 0..n-1 under root (idempotent: a marker file records n and the seed)."""
    marker = root / ".generated"
    if marker.exists() and marker.read_text() == f"{n} {seed}":
        return
    rng = random.Random(seed)
    for i in range(n):
        path = root / page_path(i).lstrip("/")
        if i % PAGES_PER_DIR == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_page(i, n, rng))
    (root / "index.html").write_text("<!doctype html><title>bench</title>\n")
    marker.write_text(f"{n} {seed}")


def write_url_file(path: Path, base: str, n: int) -> None:
    path.write_text("".join(f"{base}{page_path(i)}\n" for i in range(n)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} in {START_TIMEOUT} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Site:
    base: str  # http://127.0.0.1:PORT
    server: str  # "nginx 1.22.1" or "aiohttp fallback"
    pid: int
    error_log: Path | None = None

    def problems(self) -> list[str]:
        """The server's own complaints (e.g. out of file descriptors): they void the numbers."""
        if self.error_log is None or not self.error_log.exists():
            return []
        bad = ("[crit]", "[alert]", "[emerg]", "[error]")
        return [ln for ln in self.error_log.read_text().splitlines() if any(b in ln for b in bad)]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    return out.replace("nginx version: nginx/", "")


def start_nginx(binary: str, root: Path, tmp: Path, port: int, *,
                access_log: bool = False) -> subprocess.Popen[bytes]:
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    # As root nginx drops its worker to `nobody`, who cannot read a 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    # `stamp` lines ("<epoch s with ms> <connection no>") time every arrival (bench.bench_qps).
    log = f"access_log {tmp}/access.log stamp;" if access_log else "access_log off;"
    conf.write_text(NGINX_CONF.format(tmp=tmp, user=user, host=HOST, port=port, root=root,
                                      access_log=log))
    return subprocess.Popen(
        [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def start_fallback(root: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.site", "serve", str(root), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


@contextmanager
def serve(root: Path, tmp: Path, *, force_fallback: bool = False,
          access_log: bool = False) -> Iterator[Site]:
    """Serve root on a free loopback port until the block exits (`access_log`: nginx only,
    one `stamp` line per request in tmp/access.log)."""
    port = free_port()
    binary = None if force_fallback else nginx_binary()
    log = None
    if binary:
        proc = start_nginx(binary, root, tmp, port, access_log=access_log)
        name = f"nginx {nginx_version(binary)}"
        log = tmp / "error.log"
    else:
        proc, name = start_fallback(root, port), "aiohttp fallback server"
    try:
        wait_listening(port, proc, name)
        yield Site(f"http://{HOST}:{port}", name, proc.pid, log)
    finally:
        stop(proc)


def connections_accepted(site: Site) -> int | None:
    """Connections nginx has accepted so far (its stub_status); None on the fallback server.
    The status request itself opens one more, which the caller subtracts."""
    if not site.server.startswith("nginx"):
        return None
    import urllib.request

    with urllib.request.urlopen(f"{site.base}/__nginx_status", timeout=5) as resp:
        text = resp.read().decode()
    return int(text.splitlines()[2].split()[0])  # "accepts handled requests" line


def run_fallback_server(root: Path, port: int) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", root)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def main() -> None:
    p = argparse.ArgumentParser(description="generate or serve the benchmark site")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write N pages and a URL file")
    g.add_argument("root", type=Path)
    g.add_argument("--urls", type=int, default=20_000)
    s = sub.add_parser("serve", help="the aiohttp fallback server")
    s.add_argument("root", type=Path)
    s.add_argument("port", type=int)
    args = p.parse_args()
    if args.cmd == "generate":
        args.root.mkdir(parents=True, exist_ok=True)
        generate(args.root, args.urls)
    else:
        run_fallback_server(args.root, args.port)


if __name__ == "__main__":
    main()
