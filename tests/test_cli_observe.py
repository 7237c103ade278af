"""The observability commands and flags: worker names and metrics flags, `crawler flower`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cliharness import EXEC, run_cli


def test_a_worker_is_named_after_its_process_and_host() -> None:
    o = run_cli(["worker"])
    assert o.code == EXEC, o.err
    node = o.exec_argv[o.exec_argv.index("--hostname") + 1]
    assert node == f"crawler-{os.getpid()}@%h"
    # The records carry the same name, expanded as Celery expands it.
    assert o.exec_env["CRAWLER_WORKER_NAME"] == f"crawler-{os.getpid()}@{socket.gethostname()}"
    assert "CRAWLER_METRICS_PORT" not in o.exec_env


def test_worker_metrics_flags_reach_the_worker(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    o = run_cli(["worker", "--metrics-port", str(port), "--metrics-dir", str(tmp_path)])
    assert o.code == EXEC, o.err
    assert o.exec_env["CRAWLER_METRICS_PORT"] == str(port)
    assert o.exec_env["CRAWLER_METRICS_ADDRESS"] == "127.0.0.1"
    assert o.exec_env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_a_taken_metrics_port_is_one_line_unless_shared(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        line = run_cli(["worker", "--metrics-port", port]).one_line_error()
        assert f"cannot serve metrics on 127.0.0.1:{port}" in line and "--metrics-dir" in line
        # Shared through a directory: the port is the sharing processes' to take turns on.
        assert run_cli(["worker", "--metrics-port", port,
                        "--metrics-dir", str(tmp_path)]).code == EXEC


def test_bad_metrics_flags_are_one_line(tmp_path: Path) -> None:
    assert "--metrics-port" in run_cli(["worker", "--metrics-port", "0"]).one_line_error()
    assert "not a directory" in run_cli(
        ["worker", "--metrics-port", "9808", "--metrics-dir", str(tmp_path / "nope")]
    ).one_line_error()
    assert "metrics_port" in run_cli(
        ["worker"], env={"CRAWLER_METRICS_PORT": "70000"}).one_line_error()


def test_flower_always_has_a_login() -> None:
    o = run_cli(["flower"])
    assert o.code == EXEC, o.err
    assert o.exec_argv[1:6] == ["-m", "celery", "-A", "workers.app", "flower"]
    assert "--port=5555" in o.exec_argv and "--address=127.0.0.1" in o.exec_argv
    assert any(a.startswith("--tasks_columns=name,args,kwargs,state,result")
               for a in o.exec_argv)
    login = o.exec_env["FLOWER_BASIC_AUTH"]
    user, _, password = login.partition(":")
    assert user == "admin" and len(password) >= 16
    assert f"Flower login: {login}" in o.err  # told once, to the user who started it
    assert not any(password in a for a in o.exec_argv)  # never on a command line


def test_flower_takes_the_login_from_the_environment() -> None:
    o = run_cli(["flower", "--port", "6000", "--address", "0.0.0.0"],
                env={"FLOWER_BASIC_AUTH": "ops:s3cret,dev:other"})
    assert o.code == EXEC
    assert o.exec_env["FLOWER_BASIC_AUTH"] == "ops:s3cret,dev:other"
    assert "s3cret" not in o.err and "--port=6000" in o.exec_argv


def test_a_malformed_flower_login_is_one_line() -> None:
    for bad in ("admin", "admin:", ":pw", "ops:s3cret,broken"):
        line = run_cli(["flower"], env={"FLOWER_BASIC_AUTH": bad}).one_line_error()
        assert "FLOWER_BASIC_AUTH must be user:password" in line
        assert "s3cret" not in line  # the error never repeats a password
