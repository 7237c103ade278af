"""--proxy and --cookies end to end: three `crawler worker` processes fetch a job through a
local proxy (tests/proxyserver.py) with a login, and the password shows up nowhere."""

from __future__ import annotations

import base64
import subprocess
import sys

import orjson
import pytest
from httpserver import HTTPServer
from proxyserver import ProxyServer

from e2e.conftest import Cluster, crawler_env, urls_for

pytestmark = pytest.mark.slow

SECRET = "e2e-s3cret"


def cli(cluster: Cluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crawler", *args], input=stdin,
                          capture_output=True, env=crawler_env(cluster.redis_url), timeout=300)


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_a_job_runs_through_the_proxy_with_its_cookies_and_the_password_stays_hidden(
    mode: str, cluster: Cluster, clean_sites: list[HTTPServer]
) -> None:
    # Given a proxy that wants a login, 30 pages on three sites and a login URL that sets a
    # cookie on its redirect
    tag = f"proxy-{mode}"
    login = clean_sites[0]
    login.set_route("/login", "", status=302,
                    headers={"Set-Cookie": "sid=e2e; Path=/", "Location": f"/landing?t={tag}"})
    login.set_route("/landing", "welcome")
    urls = [*urls_for(clean_sites, 30, tag), login.url(f"/login?t={tag}")]
    with ProxyServer(auth=("user", SECRET)) as proxy:
        # When the job is submitted with --proxy (password in the URL) and --cookies
        sub = cli(cluster, "submit", "-", "--mode", mode, "--proxy",
                  proxy.url("http", "user", SECRET), "--cookies", "--allow-private-networks",
                  "--batch-size", "10", stdin="\n".join(urls).encode())
        assert sub.returncode == 0, sub.stderr.decode()
        job = sub.stdout.decode().split()[-1]
        waited = cli(cluster, "wait", job, "--timeout", "120")
        assert waited.returncode == 0, waited.stderr.decode()

        # Then the proxy forwarded every URL and the redirect hop, each with the login...
        forwarded = [f.target for f in proxy.forwarded]
        assert set(forwarded) == {*urls, login.url(f"/landing?t={tag}")}
        login_header = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        assert {f.proxy_authorization for f in proxy.forwarded} == {login_header}
        # ...the sites saw only the proxy's connections...
        ours = [a for s in clean_sites for a in s.arrivals() if a.query == f"t={tag}"]
        assert len(ours) == len(urls) + 1
        assert {a.client[1] for a in ours} <= proxy.local_ports()
        # ...and the cookie set on the redirect came back on its next hop
        [landing] = [a for a in ours if a.path == "/landing"]
        assert landing.headers.get("Cookie") == "sid=e2e"

    results = cli(cluster, "results", job)
    records = [orjson.loads(line) for line in results.stdout.splitlines()]
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert {r["status"] for r in records} == {200}
    # And the password is in no output and no worker log line
    shown = [sub, waited, results, cli(cluster, "status", job),
             cli(cluster, "status", job, "--json")]
    for out in shown:
        assert out.returncode == 0, out.stderr.decode()
        assert SECRET not in out.stdout.decode() + out.stderr.decode()
    for name in cluster.procs:
        assert SECRET not in cluster.log(name), name
