"""Security defaults: Redis with a password and with TLS, credentials never printed, the
compose file's exposure, Celery's message format and task argument checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from unittest import mock

import orjson
import pytest
import redis
from cliharness import run_cli
from httpserver import HTTPServer, self_signed_cert
from hypothesis import given, settings
from hypothesis import strategies as st
from redisserver import free_port

from crawler.settings import load_settings, mask_url

SECRET = "s3cret-Pa55"
WRONG = "wr0ng-Pa55"
READY = "Ready to accept connections"


# --- a redis-server with a password or TLS ------------------------------------------------


class SecureRedis:
    """A redis-server owned by the test, on a free loopback port, with `--requirepass` and/or
    TLS (`--tls-port`, no plain port, client certificates not required)."""

    def __init__(self, workdir: Path, *, password: str | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.password = password
        self.ca = tls[0] if tls else None
        args = [exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir)]
        if tls is None:
            args += ["--port", str(self.port)]
        else:
            cert, key = tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]
        if password is not None:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        log: list[str] = []
        # Its own log says when it listens: read it (blocking) instead of polling the port.
        for raw in self.proc.stdout:
            log.append(raw.decode(errors="replace"))
            if READY in log[-1]:
                break
        else:
            self.proc.wait(10)
            text = "".join(log)
            if tls is not None and re.search(r"(?i)tls", text):
                pytest.skip(f"this redis-server has no TLS support: {text.strip()[-200:]}")
            raise RuntimeError(f"redis-server did not start:\n{text}")
        # Keep draining its log so that it can never block on a full pipe.
        self._drainer = threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True)
        self._drainer.start()

    def url(self, *, password: str | None = None, ca: Path | None = None) -> str:
        auth = f":{password}@" if password is not None else ""
        if self.ca is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return (f"rediss://{auth}127.0.0.1:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={ca or self.ca}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._drainer.join(10)  # the log ends (EOF) with the process
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _drain(stream: IO[bytes]) -> None:
    for _ in stream:
        pass


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    server = SecureRedis(tmp_path_factory.mktemp("auth-redis"), password=SECRET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert = self_signed_cert(tmp_path_factory.mktemp("redis-tls"))
    server = SecureRedis(tmp_path_factory.mktemp("tls-redis"), tls=cert)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the server's certificate."""
    return self_signed_cert(tmp_path_factory.mktemp("other-ca"))[0]


def crawler(args: list[str], env: dict[str, str], stdin: bytes = b""
            ) -> subprocess.CompletedProcess[bytes]:
    """`crawler` as a real process, CRAWLER_* only from `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")} | env
    return subprocess.run([sys.executable, "-m", "crawler", *args], input=stdin,
                          capture_output=True, env=full, timeout=120, check=False)


def _all_output(*procs: subprocess.CompletedProcess[bytes]) -> str:
    return "".join(p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
                   for p in procs)


def _flush(server: SecureRedis) -> None:
    c = redis.Redis(port=server.port, password=server.password,
                    ssl=server.ca is not None, ssl_ca_certs=str(server.ca) if server.ca else None)
    try:
        c.flushall()
    finally:
        c.close()


def distributed_round_trip(url: str, http: HTTPServer) -> str:
    """crawl, submit, status, jobs and results against `url`, all with debug logs; returns
    everything they printed (each must succeed)."""
    env = {"CRAWLER_REDIS_URL": url}
    page = http.url("/ok").encode()
    crawl = crawler(["--log-level", "DEBUG", "crawl", "-", "--allow-private-networks"], env,
                    stdin=page)
    assert crawl.returncode == 0, crawl.stderr.decode()
    assert orjson.loads(crawl.stdout)["status"] == 200
    submit = crawler(["--log-level", "DEBUG", "submit", "-", "--job-id", "sec"], env,
                     stdin=page)
    assert submit.returncode == 0, submit.stderr.decode()
    status = crawler(["--log-level", "DEBUG", "status", "sec", "--json"], env)
    assert status.returncode == 0, status.stderr.decode()
    assert orjson.loads(status.stdout)["total"] == 1
    jobs = crawler(["jobs"], env)
    assert jobs.returncode == 0 and jobs.stdout.startswith(b"sec "), jobs.stderr.decode()
    return _all_output(crawl, submit, status, jobs)


# --- 1. redis:// with a password -----------------------------------------------------------


def test_the_right_password_works_and_is_never_printed(
    auth_redis: SecureRedis, http_server: HTTPServer
) -> None:
    _flush(auth_redis)
    printed = distributed_round_trip(auth_redis.url(password=SECRET), http_server)
    assert SECRET not in printed


COMMANDS = [["crawl", "-"], ["submit", "-"], ["status", "j1"], ["wait", "j1"],
            ["results", "j1"], ["cancel", "j1"], ["pause", "j1"], ["resume", "j1"], ["jobs"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_wrong_password_is_one_masked_line(argv: list[str], auth_redis: SecureRedis) -> None:
    outcome = run_cli(argv, env={"CRAWLER_REDIS_URL": auth_redis.url(password=WRONG)},
                      stdin=b"http://127.0.0.1:9/\n")
    line = outcome.one_line_error()
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{auth_redis.port}/0" in line
    assert WRONG not in outcome.err + outcome.out


def test_no_password_is_one_line(auth_redis: SecureRedis) -> None:
    outcome = run_cli(["jobs"], env={"CRAWLER_REDIS_URL": auth_redis.url()})
    assert "Authentication required" in outcome.one_line_error()


# --- 2. rediss:// (TLS) ------------------------------------------------------------------


def test_rediss_with_the_servers_ca_works(tls_redis: SecureRedis, http_server: HTTPServer
                                          ) -> None:
    _flush(tls_redis)
    distributed_round_trip(tls_redis.url(), http_server)


@pytest.mark.parametrize("argv", [["jobs"], ["status", "j1"], ["crawl", "-"], ["submit", "-"]],
                         ids=lambda a: a[0])
def test_rediss_with_a_wrong_ca_is_one_line(argv: list[str], tls_redis: SecureRedis,
                                            other_ca: Path) -> None:
    outcome = run_cli(argv, env={"CRAWLER_REDIS_URL": tls_redis.url(ca=other_ca)},
                      stdin=b"http://127.0.0.1:9/\n")
    line = outcome.one_line_error()
    assert f"cannot reach Redis at rediss://127.0.0.1:{tls_redis.port}/0" in line
    assert "certificate verify failed" in line


def test_plain_redis_on_a_tls_port_is_one_line(tls_redis: SecureRedis) -> None:
    outcome = run_cli(["jobs"], env={"CRAWLER_REDIS_URL": f"redis://127.0.0.1:{tls_redis.port}"})
    assert "cannot reach Redis" in outcome.one_line_error()


def test_tls_options_on_a_plain_url_are_refused_before_connecting() -> None:
    outcome = run_cli(["jobs"], env={
        "CRAWLER_REDIS_URL": "redis://127.0.0.1:1/0?ssl_cert_reqs=required&ssl_ca_certs=/ca"})
    assert "TLS options need rediss://" in outcome.one_line_error()


# --- 3. credentials masked in every line ---------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"CRAWLER_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:port/0"}, id="bad-port"),
        pytest.param({"CRAWLER_REDIS_URL": f"redis://u:{SECRET}@127.0.0.1/0?nosuch=1"},
                     id="bad-option"),
        pytest.param({"CRAWLER_REDIS_URL": f"http://:{SECRET}@127.0.0.1/"}, id="bad-scheme"),
        pytest.param({"CRAWLER_REDIS_URL": "redis://127.0.0.1:1/0",
                      "CRAWLER_BROKER_URL": f"ftp://u:{SECRET}@127.0.0.1/"}, id="bad-broker"),
    ],
)
@pytest.mark.parametrize("command", [["crawl", "-"], ["status", "j1"], ["worker"]],
                         ids=lambda a: a[0])
def test_a_bad_url_setting_is_one_masked_line(env: dict[str, str], command: list[str]) -> None:
    outcome = run_cli(command, env=env)
    line = outcome.one_line_error()
    assert "invalid setting" in line and "***" in line
    assert SECRET not in outcome.err + outcome.out


def test_an_unreachable_broker_is_one_masked_line(redis_url: str) -> None:
    port = free_port()
    outcome = run_cli(["submit", "-"], stdin=b"http://127.0.0.1:9/\n", env={
        "CRAWLER_REDIS_URL": redis_url,
        "CRAWLER_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{port}/1"})
    line = outcome.one_line_error()
    assert f"cannot reach the broker at redis://:***@127.0.0.1:{port}/1" in line
    assert SECRET not in outcome.err + outcome.out
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("*") == []  # checked before any job state was written
    finally:
        client.close()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([f"Authorization: Bearer {SECRET}", "Bad Name: x"], id="other-header-bad"),
        pytest.param([f"Authorization Bearer {SECRET}"], id="no-colon"),
        pytest.param([f"Authorization: Bearer {SECRET}\r\nX-Injected: 1"], id="crlf"),
    ],
)
def test_header_values_are_never_echoed_in_errors(headers: list[str]) -> None:
    argv = ["crawl", "-"] + [f"--header={h}" for h in headers]
    outcome = run_cli(argv)
    outcome.one_line_error()
    assert SECRET not in outcome.err + outcome.out


def test_status_and_jobs_never_show_a_jobs_headers(redis_url: str) -> None:
    env = {"CRAWLER_REDIS_URL": redis_url}
    submitted = run_cli(["submit", "-", "--job-id", "hdr", "--header",
                         f"Authorization: Bearer {SECRET}"], env=env,
                        stdin=b"http://127.0.0.1:9/\n")
    assert submitted.code == 0, submitted.err
    shown = [run_cli(a, env=env) for a in (["status", "hdr"], ["status", "hdr", "--json"],
                                           ["jobs"])]
    assert all(o.code == 0 for o in shown)
    assert all(SECRET not in o.out + o.err for o in shown)


def test_settings_repr_masks_both_urls() -> None:
    s = load_settings(redis_url=f"redis://u:{SECRET}@127.0.0.1:6380/1",
                      broker_url=f"amqp://guest:{SECRET}@127.0.0.1:5672//")
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert "redis://u:***@127.0.0.1:6380/1" in repr(s) and "amqp://guest:***@" in repr(s)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    password=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                   blacklist_characters="/?#[]"), min_size=6, max_size=20),
    user=st.sampled_from(["", "user"]),
    port=st.sampled_from(["", ":6379", ":notaport", ":99999"]),
    rest=st.sampled_from(["/0", "", "/0?ssl_ca_certs=/ca.pem"]),
)
def test_mask_url_never_shows_the_password(password: str, user: str, port: str, rest: str
                                           ) -> None:
    masked = mask_url(f"rediss://{user}:{password}@db.internal{port}{rest}")
    assert masked == f"rediss://{user}:***@db.internal{port}{rest}"  # bad ports included


def test_the_worker_banner_masks_the_password(auth_redis: SecureRedis) -> None:
    """Celery prints its broker URL at start and on every reconnect: masked as :**@."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    full["CRAWLER_REDIS_URL"] = auth_redis.url(password=SECRET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", "worker", "--hostname", "sec@%h", "--batches", "1",
         "--loglevel", "DEBUG"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for raw in proc.stdout:  # until Celery says it is ready (or the process ends)
            seen.append(raw.decode(errors="replace"))
            if re.search(r"\bsec@\S+ ready", seen[-1]):
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    text = "".join(seen) + rest.decode(errors="replace")
    assert any(" ready" in line for line in seen), text[-2000:]
    assert f":**@127.0.0.1:{auth_redis.port}" in text
    assert SECRET not in text


# --- 4. compose: nothing exposed that has no password ------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    from test_compose import COMPOSE, yaml_load

    cfg = yaml_load(COMPOSE.read_text())
    assert isinstance(cfg, dict)
    return cfg


def test_compose_publishes_no_redis_port(compose: dict[str, Any]) -> None:
    # config/redis.conf has no password and `protected-mode no`: safe only while no port of
    # Redis is published at all, not even on 127.0.0.1 (any local user could reach it).
    from test_compose import ports

    redis_service = compose["services"]["redis"]
    assert ports(redis_service) == []
    assert redis_service.get("network_mode") is None


def test_flower_api_always_needs_its_login(compose: dict[str, Any]) -> None:
    from test_compose import as_list, environment

    for name, service in compose["services"].items():
        env = environment(service)
        assert "FLOWER_UNAUTHENTICATED_API" not in env, name
        command = as_list(service.get("entrypoint")) + as_list(service.get("command"))
        assert not any("unauthenticated" in part for part in command), name


def test_compose_holds_no_credentials(compose: dict[str, Any]) -> None:
    from test_compose import environment

    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if value and "://" in value:
                assert "@" not in value.split("://", 1)[1].split("/", 1)[0], (name, key)


# --- 5. Celery: JSON only, task arguments checked -----------------------------------------


def test_celery_accepts_json_only() -> None:
    from crawler.broker import producer_app
    from workers.app import app

    for conf in (app.conf, producer_app("redis://127.0.0.1:1/0").conf):
        assert conf.accept_content == ["json"]
        assert conf.task_serializer == "json" and conf.result_serializer == "json"


@pytest.mark.parametrize(
    ("job_id", "batch_no"),
    [
        pytest.param(None, 0, id="no-id"),
        pytest.param(123, 0, id="int-id"),
        pytest.param("bad id", 0, id="space"),
        pytest.param("{x}", 0, id="hash-tag"),
        pytest.param("j1\n", 0, id="trailing-newline"),
        pytest.param("a" * 65, 0, id="long-id"),
        pytest.param(["j"], 0, id="list-id"),
        pytest.param("j1", -1, id="negative"),
        pytest.param("j1", "1", id="str-batch"),
        pytest.param("j1", 1.0, id="float-batch"),
        pytest.param("j1", True, id="bool-batch"),
        pytest.param("j1", None, id="no-batch"),
    ],
)
def test_fetch_batch_rejects_bad_arguments(job_id: Any, batch_no: Any) -> None:
    import workers.tasks as tasks

    with mock.patch.object(tasks, "runtime", side_effect=AssertionError("ran a bad task")):
        assert tasks.fetch_batch(job_id, batch_no) == {"outcome": "rejected_arguments"}
