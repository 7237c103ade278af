"""Run `crawler` in this process (`crawler.cli.main(argv)`), capturing what a user would see.

Hundreds of hypothesis examples a second instead of one process each. The process's view is
kept as it would be: stdout and stderr are byte streams behind text wrappers (stdout strict
UTF-8, stderr backslashreplace, as CPython sets them up), stdin is a byte stream, `os.execve`
(`crawler worker` replacing itself with Celery) is recorded instead of run, and the logging
set-up `main` does is undone afterwards.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from unittest import mock

from crawler import cli

EXEC = "exec"  # Outcome.code when `crawler worker` would have exec'd Celery


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str
    exec_argv: list[str] = field(default_factory=list)
    exec_env: dict[str, str] = field(default_factory=dict)

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def is_usage_error(self) -> bool:
        """Exit 2 for the user's input (not because a backend could not be reached)."""
        return self.code == 2 and "cannot reach" not in self.err

    def one_line_error(self) -> str:
        """The single error line; fails the test when there is anything else on stderr."""
        assert self.code == 2, (self.code, self.err)
        assert len(self.err_lines) == 1, self.err
        line = self.err_lines[0]
        assert line.startswith("crawler: error: "), line
        assert "Traceback" not in self.err
        return line


class _Exec(Exception):
    """Raised by the fake `os.execve`: the worker would have become Celery here."""


@contextmanager
def _kept_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_cli(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | BinaryIO = b"",
) -> Outcome:
    """`crawler *argv` in-process with CRAWLER_* taken from `env` only."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace",
                           write_through=True)
    raw_in = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
    fake_stdin = io.TextIOWrapper(raw_in, encoding="utf-8")  # type: ignore[arg-type]
    execs: list[tuple[list[str], dict[str, str]]] = []

    def fake_execve(path: Any, args: Any, environ: Any) -> None:
        execs.append(([str(a) for a in args], dict(environ)))
        raise _Exec

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}
    clean.update(env or {})
    code: int | str
    with _kept_logging(), mock.patch.dict(os.environ, clean, clear=True), \
            mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err), \
            mock.patch.object(sys, "stdin", fake_stdin), \
            mock.patch.object(os, "execve", fake_execve):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse: --help, --version and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except _Exec:
            code = EXEC
        out.flush()
        err.flush()
    return Outcome(code, out_bytes.getvalue().decode("utf-8"),
                   err_bytes.getvalue().decode("utf-8", "backslashreplace"),
                   execs[0][0] if execs else [], execs[0][1] if execs else {})
