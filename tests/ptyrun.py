"""Run a command with its stdout and stderr on a pseudo-terminal, as a user's shell would."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
from collections.abc import Mapping, Sequence


def run_in_pty(argv: Sequence[str], env: Mapping[str, str], *, timeout: float = 60.0,
               columns: int = 120) -> tuple[int, str]:
    """(exit status, everything the program wrote to the terminal, without its escape codes:
    colours and cursor moves; every redrawn frame stays in the text)."""
    main, child = pty.openpty()
    env = {**env, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            env=env)
    os.close(child)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s: {seen[-2000:]!r}")
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the program closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
    return proc.wait(timeout), _ESCAPE.sub("", seen.decode(errors="replace"))


_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
