"""crawler.logs: text and JSON lines, levels, the credential mask, the CLI's and workers' set-up."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from cliharness import run_cli
from httpserver import HTTPServer
from test_cli import run

from crawler import cli, cli_jobs
from crawler.logs import MASK, Throttle, format_from_env, mask, setup_logging
from crawler.settings import load_settings

SECRET = "s3cr3t-PW"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def _kept_root() -> Iterator[None]:
    """Every test here installs a handler on the root logger: the next test gets it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def capture(fmt: str, level: str = "DEBUG") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream)
    return stream


# --- the mask ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"redis://user:{SECRET}@db:6379/0", "redis://user:***@db:6379/0"),
        (f"at 'rediss://:{SECRET}@db/1' (x)", "at 'rediss://:***@db/1' (x)"),
        (f"amqp://u:p@{SECRET}@broker//", "amqp://u:***@broker//"),  # "@" in the password
        ("redis://:**@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),  # Celery's mask
        ("http://user@host/path?q=1", "http://user@host/path?q=1"),  # no password
        ("http://host:8080/a:b@c", "http://host:8080/a:b@c"),  # "@" in the path only
        (f"{{'Authorization': 'Bearer {SECRET}', 'Accept': '*/*'}}",
         "{'Authorization': '***', 'Accept': '*/*'}"),
        (f"Proxy-Authorization: Basic {SECRET}", "Proxy-Authorization: ***"),
        (f'"Cookie": "sid={SECRET}; x=1", "n": 2', '"Cookie": "***", "n": 2'),
        (f"GET https://h/p?a=1&access_token={SECRET}&password={SECRET}#f",
         "GET https://h/p?a=1&access_token=***&password=***#f"),
        (f"api_key={SECRET} next", "api_key=*** next"),
        ("batch 3 of job abc: 10 URLs, stop=done", "batch 3 of job abc: 10 URLs, stop=done"),
    ],
)
def test_mask(text: str, expected: str) -> None:
    assert mask(text) == expected
    assert mask(mask(text)) == expected  # masking twice changes nothing


def test_filter_masks_the_message_its_arguments_and_extras() -> None:
    stream = capture("text")
    log = logging.getLogger("crawler.test")
    log.warning(f"in the message redis://u:{SECRET}@h/0")
    log.warning("in the arguments %s and %r", f"redis://u:{SECRET}@h/0",
                {"url": f"https://a:{SECRET}@b/"})
    log.warning("in an extra", extra={"url": f"redis://u:{SECRET}@h/0", "password": SECRET,
                                      "headers": {"Cookie": SECRET}})
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count("redis://u:***@h/0") == 3 and "https://a:***@b/" in out


def test_filter_masks_the_traceback() -> None:
    stream = capture("text")
    try:
        raise ConnectionError(f"cannot reach redis://admin:{SECRET}@db:6379/0")
    except ConnectionError:
        logging.getLogger("crawler.test").exception("lost %s", "the backend")
    out = stream.getvalue()
    assert SECRET not in out
    assert "Traceback (most recent call last)" in out
    assert "ConnectionError: cannot reach redis://admin:***@db:6379/0" in out


def test_bad_log_arguments_neither_raise_nor_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    handler = setup_logging("DEBUG", "text", stream)
    alone = logging.getLogger("crawler.test.alone")  # away from pytest's handlers, which raise
    monkeypatch.setattr(alone, "propagate", False)
    monkeypatch.setattr(alone, "handlers", [handler])
    alone.warning("two %s %s", f"redis://u:{SECRET}@h")
    line = stream.getvalue()
    assert "two %s %s" in line and SECRET not in line


# --- the formats ---------------------------------------------------------------------------


def test_json_lines_carry_ts_level_logger_msg_exc_and_extras() -> None:
    stream = capture("json")
    log = logging.getLogger("crawler.test")
    log.info("batch %d done", 7, extra={"job": "j1", "batch": 7, "worker": "w@h"})
    try:
        raise ValueError(f"redis://u:{SECRET}@h/0")
    except ValueError:
        log.error("failed", exc_info=True, extra={"job": "j1"})
    first, second = json_lines(stream.getvalue())
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert TS.match(first["ts"]), first["ts"]
    assert first | {"level": "INFO", "logger": "crawler.test", "msg": "batch 7 done",
                    "job": "j1", "batch": 7, "worker": "w@h"} == first
    assert "exc" not in first
    assert second["level"] == "ERROR" and second["job"] == "j1"
    assert second["exc"].startswith("Traceback") and "ValueError: redis://u:***@h/0" in second[
        "exc"]
    assert SECRET not in stream.getvalue()


def test_json_encodes_any_extra_masked() -> None:
    class Thing:
        def __str__(self) -> str:
            return f"thing at redis://u:{SECRET}@h"

    stream = capture("json")
    logging.getLogger("x").warning("odd", extra={"thing": Thing(), "raw": b"\x00\xff"})
    [line] = json_lines(stream.getvalue())
    assert line["thing"] == "thing at redis://u:***@h" and isinstance(line["raw"], str)


def test_text_lines() -> None:
    stream = capture("text", "INFO")
    log = logging.getLogger("crawler.test")
    log.debug("not at INFO")
    log.info("batch done", extra={"job": "j1", "batch": 3, "note": "two words",
                                  "data": {"a": 1}})
    [line] = stream.getvalue().splitlines()
    ts, rest = line.split(" ", 1)
    assert TS.match(ts)
    assert rest == "INFO crawler.test: batch done job=j1 batch=3 note='two words'"


def test_levels_and_a_second_setup_replaces_the_first() -> None:
    first = capture("text", "WARNING")
    second = capture("json", "ERROR")
    log = logging.getLogger("crawler.test")
    log.warning("dropped")
    log.error("kept")
    assert first.getvalue() == ""
    assert [r["msg"] for r in json_lines(second.getvalue())] == ["kept"]
    assert sum(h.get_name() == "crawler" for h in logging.getLogger().handlers) == 1


def test_the_default_stream_is_stderr_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logging.getLogger("crawler.test").info("to stderr")
    assert json_lines(capsys.readouterr().err)[0]["msg"] == "to stderr"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "yaml")


def test_format_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert format_from_env() == "text"
    monkeypatch.setenv("CRAWLER_LOG_FORMAT", "JSON")
    assert format_from_env() == "json"
    monkeypatch.setenv("CRAWLER_LOG_FORMAT", "yaml")  # the settings refuse it later, in one line
    assert format_from_env() == "text"


def test_throttle_lets_one_line_through_per_period_and_counts_the_rest() -> None:
    stream = capture("json", "INFO")
    log = logging.getLogger("crawler.test")
    throttle = Throttle(every=3600)
    for host in ("a", "b", "c"):
        throttle.log(log, logging.WARNING, "could not record a penalty for %s", host)
    assert [r["msg"] for r in json_lines(stream.getvalue())] == [
        "could not record a penalty for a"]
    throttle._next = 0.0  # the period is over
    throttle.log(log, logging.WARNING, "could not record a penalty for %s", "d")
    assert json_lines(stream.getvalue())[-1]["msg"] == (
        "could not record a penalty for d (and 2 more like it since the last such line)")


# --- the CLI -------------------------------------------------------------------------------


def test_crawl_logs_json_lines_and_keeps_its_summary_plain(http_server: HTTPServer,
                                                           tmp_path: Path) -> None:
    """Logs are JSON objects; the summary the command prints after the crawl is its output
    for a person (the machine-readable one is --stats-json): plain text, after the logs."""
    src = tmp_path / "urls.txt"
    src.write_text("".join(http_server.url(f"/page/{i}") + "\n" for i in range(30)))
    proc = run(["--log-format", "json", "--log-level", "INFO", "crawl", str(src),
                "--redis-url", "", "-o", str(tmp_path / "out.jsonl"), "--no-progress",
                "--allow-private-networks", "--dedupe", "bloom"], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    lines = err.splitlines()
    logs = [orjson.loads(line) for line in lines if line.startswith("{")]
    summary = [line for line in lines if not line.startswith("{")]
    assert lines == [*lines[:len(logs)], *summary]  # the logs, then the summary
    for entry in logs:
        assert {"ts", "level", "logger", "msg"} <= set(entry)
        assert entry["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL")
    # One notable event (bloom without a Redis server), nothing per URL.
    assert [e["logger"] for e in logs] == ["crawler.embedded"]
    assert "--dedupe bloom needs a Redis server" in logs[0]["msg"]
    assert summary[0].startswith("job ") and "fetched 30 URLs" in summary[0]
    assert all(line.startswith("  ") for line in summary[1:])


def test_env_chooses_the_format(http_server: HTTPServer, tmp_path: Path) -> None:
    proc = run(["crawl", "-", "--redis-url", "", "--allow-private-networks", "--dedupe", "bloom",
                "--no-progress"], stdin=http_server.url("/ok").encode(),
               env={"CRAWLER_LOG_FORMAT": "json"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert orjson.loads(proc.stderr.splitlines()[0])["level"] == "WARNING"


def test_a_bad_log_format_flag_is_one_line_exit_2() -> None:
    line = run_cli(["--log-format", "yaml", "crawl", "-"]).one_line_error()
    assert "--log-format" in line and "invalid choice" in line
    line = run_cli(["crawl", "-", "--log-format", "xml"]).one_line_error()
    assert "--log-format" in line


def test_a_bad_log_format_setting_is_one_line_exit_2() -> None:
    line = run_cli(["crawl", "-"], env={"CRAWLER_LOG_FORMAT": "yaml"}).one_line_error()
    assert "invalid setting log_format" in line


def test_the_cli_default_level_is_warning() -> None:
    with mock.patch.object(cli, "COMMANDS", {"crawl": lambda args: 0}):
        assert cli.main(["crawl", "-"]) == 0
    assert logging.getLogger().level == logging.WARNING
    with mock.patch.object(cli, "COMMANDS", {"crawl": lambda args: 0}):
        assert cli.main(["--log-level", "DEBUG", "crawl", "-"]) == 0
    assert logging.getLogger().level == logging.DEBUG


# --- workers -------------------------------------------------------------------------------


def _worker_exec(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """What `crawler worker ...` would exec: Celery's argv and environment."""
    args = cli.build_parser().parse_args(["worker", *argv])
    seen: list[tuple[list[str], dict[str, str]]] = []

    def fake_execve(path: Any, a: Any, env: Any) -> None:
        seen.append((list(a), dict(env)))

    with mock.patch.object(os, "execve", fake_execve):
        cli_jobs.cmd_worker(args)
    return seen[0]


def test_worker_level_and_format_reach_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    argv, env = _worker_exec([])
    assert argv[argv.index("--loglevel") + 1] == "INFO"  # the log_level setting's default
    assert env["CRAWLER_LOG_LEVEL"] == "INFO" and env["CRAWLER_LOG_FORMAT"] == "text"

    monkeypatch.setenv("CRAWLER_LOG_LEVEL", "WARNING")
    argv, env = _worker_exec(["--log-format", "json"])
    assert argv[argv.index("--loglevel") + 1] == "WARNING"
    assert env["CRAWLER_LOG_FORMAT"] == "json"

    argv, env = _worker_exec(["--loglevel", "debug"])  # Celery's flag wins
    assert argv[argv.index("--loglevel") + 1] == "DEBUG" and env["CRAWLER_LOG_LEVEL"] == "DEBUG"

    argv, env = _worker_exec(["--loglevel", "critical"])  # not a log_level value: not exported
    assert argv[argv.index("--loglevel") + 1] == "CRITICAL" and env["CRAWLER_LOG_LEVEL"] == (
        "WARNING")


def test_the_celery_setup_logging_signal_configures_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from celery.signals import setup_logging as celery_setup_logging

    import workers.app

    monkeypatch.setattr(workers.app, "settings", load_settings(log_format="json"))
    # As Celery's worker sends it (celery.app.log.Logging.setup_logging_subsystem).
    replies = celery_setup_logging.send(sender=None, loglevel=logging.INFO, logfile=None,
                                        format="%(message)s", colorize=False)
    assert any(receiver is workers.app.configure_logging for receiver, _ in replies)
    logging.getLogger("celery.app.trace").info(
        "Task %(name)s[%(id)s] succeeded", {"name": "crawler.fetch_batch", "id": "t1"},
        extra={"data": {"id": "t1", "url": f"redis://u:{SECRET}@h"}})
    logging.getLogger("crawler.worker_runtime").debug("below INFO: dropped")
    [line] = json_lines(capsys.readouterr().err)
    assert line["logger"] == "celery.app.trace" and line["level"] == "INFO"
    assert line["msg"] == "Task crawler.fetch_batch[t1] succeeded"
    assert line["data"] == {"id": "t1", "url": f"redis://u:{MASK}@h"}
