"""The container setup: Dockerfile, docker-compose.yml and config/redis.conf.

The compose file is checked twice: resolved by the real compose parser (`docker compose config`
or the Python `docker-compose` v1, no engine needed) when one is installed, and as written
(PyYAML) always. Only the parser part skips when no parser exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
REDIS_CONF = ROOT / "config" / "redis.conf"
REDIS_CONF_TARGET = "/usr/local/etc/redis/redis.conf"
DUMMY_AUTH = "ci-user:not-a-secret"
LOCAL_HOSTS = {"127.0.0.1", "::1", "[::1]", "localhost"}
PARSER_TIMEOUT = 120


# --- helpers --------------------------------------------------------------------------------


def compose_parser() -> list[str] | None:
    """`docker compose` (v2 plugin) if it answers, else `docker-compose` (v1 or v2), else None."""
    docker = shutil.which("docker")
    if docker:
        try:
            probe = subprocess.run([docker, "compose", "version"], capture_output=True,
                                   timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def yaml_load(text: str) -> Any:
    """PyYAML in this interpreter; else the interpreter that runs docker-compose v1 (it always
    has PyYAML); else skip."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    legacy = shutil.which("docker-compose")
    if legacy:
        with open(legacy, "rb") as f:
            first = f.readline().decode(errors="replace")
        if first.startswith("#!") and "python" in first:
            interpreter = first[2:].split()
            out = subprocess.run(
                [*interpreter, "-c",
                 "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
                input=text, capture_output=True, text=True, timeout=60, check=False)
            if out.returncode == 0:
                return json.loads(out.stdout)
    pytest.skip("no YAML parser: install pyyaml (add it to the test extras)")


def run_config(
    parser: list[str], tmp_path: Path, auth: str | None
) -> subprocess.CompletedProcess[str]:
    """`<parser> config` on our file, with an empty env file (no ./.env) and a clean env."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "FLOWER_"))}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [*parser, "--env-file", str(empty), "--project-directory", str(ROOT),
         "-f", str(COMPOSE), "--profile", "tools", "--profile", "monitoring", "config"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=PARSER_TIMEOUT, check=False)


def ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of each published port, short or long syntax."""
    result = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            result.append((str(p.get("host_ip") or ""), str(p.get("published") or ""),
                           str(p["target"])))
            continue
        spec = str(p).split("/")[0]
        if spec.startswith("["):  # [::1]:5555:5555
            ip, _, rest = spec[1:].partition("]:")
            host, _, target = rest.rpartition(":")
            result.append((ip, host, target))
            continue
        parts = spec.rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts  # "6379" publishes on every interface
        result.append((parts[0], parts[1], parts[2]))
    return result


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, short or long syntax."""
    result = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            result.append((str(v.get("source", "")), str(v["target"]),
                           bool(v.get("read_only", False))))
            continue
        parts = str(v).split(":")
        mode = parts[2] if len(parts) > 2 else "rw"
        result.append((parts[0], parts[1], "ro" in mode.split(",")))
    return result


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def seconds(duration: Any) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(duration))
    assert m and any(m.groups()), f"not a duration: {duration!r}"
    h, mi, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(x) for x in value] if isinstance(value, list) else str(value).split()


def healthcheck_text(service: dict[str, Any]) -> str:
    hc = service.get("healthcheck") or {}
    assert not hc.get("disable"), "healthcheck disabled"
    return " ".join(as_list(hc.get("test")))


def check_structure(cfg: dict[str, Any]) -> None:
    """What must hold for the file as written and as resolved by the parser."""
    services = cfg["services"]
    assert {"redis", "worker", "flower", "submit"} <= set(services)
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name} would bypass the compose network"
        assert not svc.get("privileged"), name

    # redis: AOF + noeviction from the mounted file, never reachable from outside this host
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    for ip, _, _ in ports(redis):
        assert ip in LOCAL_HOSTS, f"redis published on {ip or 'every interface'}"
    assert REDIS_CONF_TARGET in as_list(redis.get("command"))
    conf_mounts = [m for m in mounts(redis) if m[1] == REDIS_CONF_TARGET]
    assert conf_mounts and conf_mounts[0][0].endswith("config/redis.conf") and conf_mounts[0][2]
    assert any(target == "/data" for _, target, _ in mounts(redis)), "no data volume"
    assert re.search(r"redis-cli\b.*\bping", healthcheck_text(redis))

    # worker: built here, scalable, healthy, restarted, time to hand batches back
    worker = services["worker"]
    assert worker.get("build"), "worker is not built from the Dockerfile"
    for key in ("container_name", "hostname", "ports"):
        assert not worker.get(key), f"worker has {key}: --scale worker=N would clash"
    assert as_list(worker.get("command"))[0] == "worker"
    assert environment(worker)["CRAWLER_REDIS_URL"] == "redis://redis:6379/0"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "inspect ping" in healthcheck_text(worker)
    assert worker.get("restart") in {"always", "unless-stopped", "on-failure"}
    assert seconds(worker.get("stop_grace_period", 10)) >= 60

    # worker metrics: on the compose network, where config/prometheus.yml looks for them
    env = environment(worker)
    assert env["CRAWLER_METRICS_PORT"] == "9808" and env["CRAWLER_METRICS_ADDRESS"] == "0.0.0.0"

    # flower: same image, `crawler flower`, localhost only, basic auth, healthcheck
    flower = services["flower"]
    assert flower.get("image") == worker.get("image") and flower.get("build")
    cmd = as_list(flower.get("entrypoint")) + as_list(flower.get("command"))
    assert cmd[:2] == ["crawler", "flower"]
    assert ports(flower) == [("127.0.0.1", "5555", "5555")]
    assert "FLOWER_BASIC_AUTH" in environment(flower)
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "5555" in healthcheck_text(flower)

    # monitoring: never started by a plain `up`, published on this host only
    for name in ("prometheus", "grafana"):
        svc = services[name]
        assert "monitoring" in as_list(svc.get("profiles")), name
        assert ports(svc) and all(ip in LOCAL_HOSTS for ip, _, _ in ports(svc)), name
        for source, _, read_only in mounts(svc):
            if source.startswith((".", "/")):  # a file of ours: mounted read-only
                assert read_only, (name, source)

    # submit: a one-shot tool reading URLs from stdin, never started by `up`
    submit = services["submit"]
    assert "tools" in as_list(submit.get("profiles"))
    assert as_list(submit.get("entrypoint")) + as_list(submit.get("command")) == [
        "crawler", "submit", "-"]
    assert not ports(submit)


# --- the compose file as resolved by the real parser ---------------------------------------


@pytest.fixture(scope="module")
def parser() -> list[str]:
    found = compose_parser()
    if found is None:
        pytest.skip("no compose parser: neither `docker compose` nor `docker-compose` "
                    "(apt-get install docker-compose)")
    return found


@pytest.fixture(scope="module")
def resolved(parser: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = run_config(parser, tmp_path_factory.mktemp("compose"), DUMMY_AUTH)
    assert out.returncode == 0, f"{' '.join(parser)} config failed:\n{out.stderr}"
    cfg = yaml_load(out.stdout)
    assert isinstance(cfg, dict)
    return cfg


def test_parser_validates_the_compose_file(resolved: dict[str, Any]) -> None:
    check_structure(resolved)
    assert environment(resolved["services"]["flower"])["FLOWER_BASIC_AUTH"] == DUMMY_AUTH


def test_parser_refuses_without_flower_basic_auth(parser: list[str], tmp_path: Path) -> None:
    out = run_config(parser, tmp_path, None)
    assert out.returncode != 0, "compose config succeeded without FLOWER_BASIC_AUTH"
    assert "FLOWER_BASIC_AUTH" in out.stderr


# --- the files as written (no parser needed) ------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    cfg = yaml_load(COMPOSE.read_text())  # PyYAML resolves the anchors and `<<` merges
    assert isinstance(cfg, dict)
    return cfg


def test_compose_file_structure(raw: dict[str, Any]) -> None:
    check_structure(raw)
    assert "version" not in raw, "obsolete `version:` key (compose spec)"


def test_flower_basic_auth_has_no_default(raw: dict[str, Any]) -> None:
    value = environment(raw["services"]["flower"])["FLOWER_BASIC_AUTH"] or ""
    # ${VAR:?message} / ${VAR?message} fail without VAR; ${VAR:-x} / ${VAR-x} would be a default
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:?\?[^}]*\}", value), value


def test_worker_healthcheck_names_its_own_node(raw: dict[str, Any]) -> None:
    # $$HOSTNAME reaches the container's shell; a single $ would be interpolated by compose
    # from the *host's* environment (empty), pinging a node that does not exist.
    test = healthcheck_text(raw["services"]["worker"])
    assert "celery@$$HOSTNAME" in test
    assert not re.search(r"(?<!\$)\$\{?HOSTNAME", test)


def test_compose_header_documents_the_commands() -> None:
    header = COMPOSE.read_text().split("\nx-", 1)[0]
    for command in ("docker compose up", "--scale worker=", "docker compose run --rm -T submit",
                    "FLOWER_BASIC_AUTH", "docker compose down", "127.0.0.1:5555"):
        assert command in header, command


def redis_directives() -> dict[str, str]:
    directives = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key.lower()] = value.strip()
    return directives


def test_redis_conf_keeps_queued_work() -> None:
    d = redis_directives()
    assert d["appendonly"] == "yes"
    assert d["appendfsync"] == "everysec"
    assert d["maxmemory-policy"] == "noeviction"
    assert d["dir"] == "/data"


def test_redis_conf_explains_every_directive() -> None:
    previous = ""
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert previous.startswith("#"), f"no comment above {line!r}"
        if line:
            previous = line


@pytest.fixture
def redis_with_our_conf(tmp_path: Path) -> Iterator[Any]:
    """redis-server on our redis.conf, with its `dir /data` (the container's volume; Redis
    chdirs there while reading the file) pointed at tmp, and a unix socket instead of a port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed")
    import redis

    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"(?m)^dir /data$", f"dir {tmp_path}", REDIS_CONF.read_text()))
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [server, str(conf), "--bind", "127.0.0.1",
         "--port", "0", "--unixsocket", str(sock), "--daemonize", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"redis-server rejected config/redis.conf:\n{output}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_redis_server_accepts_the_conf(redis_with_our_conf: Any) -> None:
    c = redis_with_our_conf
    assert c.config_get("appendonly") == {"appendonly": "yes"}
    assert c.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert c.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


# --- the image ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, args = line.partition(" ")
            result.append((word.upper(), args.strip()))
    return result


def test_dockerfile_runs_the_crawler_command_as_a_user() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]

    def last(word: str) -> str:
        values = [args for w, args in final if w == word]
        assert values, f"no {word} in the final stage"
        return values[-1]

    assert json.loads(last("ENTRYPOINT")) == ["crawler"]
    assert json.loads(last("CMD")) == ["worker"]
    user = last("USER").split(":")[0]
    assert user not in {"root", "0"}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "crawler" in scripts  # the entrypoint is the project's console script


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    instructions = dockerfile_instructions()
    copies = [args for word, args in instructions if word == "COPY"]
    first_pyproject = next(i for i, a in enumerate(copies) if "pyproject.toml" in a.split())
    first_source = next(i for i, a in enumerate(copies) if a.split()[0] in {"crawler", "."})
    assert first_pyproject < first_source
    assert any("pip install" in args for word, args in instructions if word == "RUN")


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".env"} <= ignored
