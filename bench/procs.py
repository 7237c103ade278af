"""Child processes for the benchmark: run one measured, read a server's CPU, run a redis-server.

A contender's CPU time and peak RSS come from `os.wait4` on that exact child, so nothing
else on the machine (the site, Redis, the harness) is charged to it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.site import HOST, free_port, stop, wait_listening

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Finished:
    """What one child did: exit status, output, and its own resource usage."""

    returncode: int
    stdout: str
    stderr: str
    wall: float  # s from spawn to exit, interpreter start-up and imports included
    cpu: float  # s, user + system
    maxrss_kib: int
    timed_out: bool


def cpu_model() -> str:
    """The CPU's model name (benchmark reports say what they ran on)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor() or "?")


def git_revision(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                          capture_output=True, text=True).stdout.strip() or "?"


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str], cwd: Path, tmp: Path, timeout: float
) -> Finished:
    """Run cmd to completion (killed after timeout s) and measure it with wait4."""
    out_path, err_path = tmp / "child.out", tmp / "child.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        hwm = PeakRSS(proc.pid)
        hwm.start()
        try:
            # Files, not pipes: nothing to drain, so wait4 can reap it and keep its rusage.
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            hwm.stop()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: Popen must not
    return Finished(
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        wall=wall,
        cpu=ru.ru_utime + ru.ru_stime,
        # ru_maxrss also counts the spawning process's RSS at exec (Linux keeps the larger of
        # the old and new image's peaks): a big harness made every small child look big.
        maxrss_kib=hwm.peak_kib or ru.ru_maxrss,
        timed_out=killed.is_set(),
    )


class PeakRSS(threading.Thread):
    """Samples a process's own peak RSS (VmHWM of /proc/PID/status: since its exec) every
    SAMPLE_EVERY s until stopped; the last sample before it exits is its peak so far."""

    SAMPLE_EVERY = 0.02

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.SAMPLE_EVERY):
            try:
                text = self.path.read_text()
            except OSError:
                return  # exited (or not Linux)
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> None:
        self._done.set()
        self.join(1)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and its direct children (nginx master + worker); 0 off Linux."""
    total = 0.0
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        f = _stat(int(entry.name))
        if f is not None and (int(entry.name) == pid or int(f[1]) == pid):
            total += (int(f[11]) + int(f[12])) / CLK_TCK  # utime, stime
    return total


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int
    version: str

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()


@contextmanager
def redis_server(tmp: Path) -> Iterator[Redis | None]:
    """A private redis-server on a free loopback port (never 6379); None if not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    data = tmp / "redis"
    data.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(data), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc, "redis-server")
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        short = next((w[2:] for w in version.split() if w.startswith("v=")), "?")
        yield Redis(f"redis://{HOST}:{port}/0", proc.pid, short)
    finally:
        stop(proc)


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, steal excluded): a report's
    "other load" is this minus what the benchmark's own processes used."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def own_cpu() -> float:
    """CPU seconds of this process and its reaped descendants."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
