"""Make the README's pictures from a real local run: `python docs/shots.py`.

Starts a redis-server, a small site on 127.0.0.2-4 (some pages fail, some are slow), two
`crawler worker` processes sharing one metrics port, and `crawler flower`; submits a rate-limited
job and, while it runs, writes:

* docs/watch.svg: the `crawler status JOB --watch` view of the running job (the same code,
  rendered on rich's recording console);
* docs/flower-tasks.png: Flower's task list (headless Chromium, when installed);
* docs/metrics-sample.txt: an excerpt of the workers' /metrics.

Everything listens on loopback and stops at the end. Needs redis-server on PATH.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from aiohttp import web
from rich.console import Console

from crawler import Crawler
from crawler.watch import from_status, render

DOCS = Path(__file__).resolve().parent
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
LOGIN = "admin:docs-only-password"
URLS = 6000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_site(port: int) -> None:
    """Pages on three loopback hosts: 3 % answer 500, 1 % take 3 s (over the job's timeout)."""

    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        if i % 33 == 0:
            return web.Response(status=500, text="oops")
        if i % 97 == 0:
            await asyncio.sleep(3)
        return web.Response(text=f"<html><title>page {i}</title><p>{'x' * 2000}</p></html>",
                            content_type="text/html")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/page/{i:\\d+}", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for host in HOSTS:
            await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="crawler-shots-"))
    redis_port, site_port, flower_port, metrics_port = (free_port() for _ in range(4))
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    env |= {"CRAWLER_REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": LOGIN}
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "processes.log", "ab")  # noqa: SIM115 - closed at the end
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(tmp)], stdout=log, stderr=log))
        threading.Thread(target=serve_site, args=(site_port,), daemon=True).start()
        for name in ("w1@laptop", "w2@laptop"):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "crawler", "worker", "--hostname", name,
                 "--concurrency", "50", "--metrics-port", str(metrics_port),
                 "--metrics-dir", str(tmp)], env=env, stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "crawler", "flower", "--port", str(flower_port)],
            env=env, stdout=log, stderr=log))
        wait_http(f"http://127.0.0.1:{flower_port}/healthcheck")
        wait_http(f"http://127.0.0.1:{metrics_port}/metrics")
        time.sleep(3)  # the workers' first heartbeat to Flower

        urls = [f"http://{HOSTS[i % 3]}:{site_port}/page/{i}" for i in range(URLS)]
        with Crawler(redis_url=redis_url) as c:
            job = c.submit(urls, allow_private_networks=True, batch_size=250, qps=400,
                           per_host_qps=150, timeout=1.0, retries=0)
            time.sleep(8)
            console = Console(record=True, width=100, file=open(os.devnull, "w"))  # noqa: SIM115
            console.print(render(from_status(c.status(job))))
            console.save_svg(str(DOCS / "watch.svg"), title=f"crawler status {job} --watch")
            metrics = urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            (DOCS / "metrics-sample.txt").write_text("\n".join(
                line for line in metrics.splitlines()
                if line.startswith(("crawler_pages_total", "crawler_responses_total",
                                    "crawler_errors_total", "crawler_inflight",
                                    "crawler_fetch_duration_seconds_bucket{le=\"0.1\"",
                                    "crawler_fetch_duration_seconds_count",
                                    "crawler_limiter_defers_total"))) + "\n")
            c.wait(job, timeout=120)
        time.sleep(2)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:
            user, _, password = LOGIN.partition(":")
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=1900,820", "--virtual-time-budget=8000",
                 f"--screenshot={DOCS / 'flower-tasks.png'}",
                 f"http://{user}:{password}@127.0.0.1:{flower_port}/tasks"],
                check=True, stdout=log, stderr=log, timeout=120)
        print(f"job {job}: pictures in {DOCS}; process logs in {tmp / 'processes.log'}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


if __name__ == "__main__":
    main()
