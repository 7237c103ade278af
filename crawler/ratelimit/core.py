"""The limiter's decisions without I/O: config, key names, script arguments, reply decoding.

The sync and async clients in `crawler.ratelimit` only send what this module builds and hand the
reply back to it, so both share one tested implementation (the httpx pattern). Every time value
crossing into Lua is an integer number of microseconds: Redis Lua numbers are doubles, exact up to
2**53 us (~285 years), and integers keep the script free of rounding questions.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions

from crawler.errors import BackendUnavailable, ConfigError

US = 1_000_000  # microseconds per second: the unit of every time the scripts see

# Every key one script call touches carries this hash tag, so Redis Cluster maps them all to one
# slot and the multi-key script stays legal there.
HASH_TAG = "{rl}"

# Added to every key expiry: a key must outlive the last instant its state can matter, and a
# computed TTL of 0 must never mean "store nothing" (spring-cloud-gateway #2453).
TTL_SLACK_MS = 1_000

# The slow-down factor m counts as back to 1 once m - 1 falls below this; without a floor a slowed
# host without its own limit would be paced (by a vanishing amount) until its key expired.
M_EPSILON = 0.001

_UNSET_RETRY_AFTER = -1  # ARGV value telling penalize.lua there was no Retry-After


class Decision(enum.IntEnum):
    """What acquire.lua decided for one host; values are the script's wire codes."""

    GRANTED = 0  # slot committed: sleep `wait` then go
    DEFER_HOST = 1  # host not ready within host_horizon: nothing written; retry after `wait`
    DEFER_GLOBAL = 2  # global not ready within global_horizon: nothing written (back-pressure)


@dataclass(frozen=True, slots=True)
class Grant:
    """One answer of the limiter: a decision and a wait relative to the moment Redis decided."""

    decision: Decision
    wait_us: int  # >= 0; relative, so the caller sleeps on its own monotonic clock

    @property
    def wait(self) -> float:
        """The wait in seconds, ready for `time.sleep` / `asyncio.sleep`."""
        return self.wait_us / US

    @property
    def granted(self) -> bool:
        return self.decision is Decision.GRANTED


@dataclass(frozen=True, kw_only=True)
class LimiterConfig:
    """Limits shared by every worker using the same Redis, `prefix` and `scope`.

    Rates are per second; 0 switches a limit off. A burst B lets B+1 requests go at once from idle.
    """

    qps: float = 0.0  # global requests/s across all workers; 0 = no global limit
    burst: int = 0  # global burst; 0 = strict pacing (<= R+1 in any 1 s window)
    per_host_qps: float = 0.0  # 0 = no per-host limit
    per_host_burst: int = 0
    host_horizon: float = 0.05  # s: a busy host is deferred rather than holding a worker
    global_horizon: float = 2.0  # s: beyond this the caller gets back-pressure, not a long sleep
    prefix: str = "crawler"  # key prefix
    scope: str = "global"  # name of the global bucket (independent limits can coexist)
    penalty_base: float = 1.0  # s: first back-off without Retry-After, doubling per incident
    penalty_cap: float = 300.0  # s: cap of the exponential back-off
    retry_after_cap: float = 600.0  # s: a hostile or broken Retry-After cannot park a host forever
    slowdown_cap: float = 16.0  # max slow-down factor m (x2 per incident)
    slowdown_half_life: float = 60.0  # s: m decays back towards 1 with this half-life
    slowdown_interval: float = 0.1  # s: interval for a slowed host that has no per-host limit
    forgive_after: float = 300.0  # s of quiet after which the incident count resets

    def __post_init__(self) -> None:
        for name in ("qps", "per_host_qps"):
            _check_number(self, name, minimum=0.0, strict=False)
        for name in ("burst", "per_host_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("host_horizon", "global_horizon", "penalty_base", "penalty_cap",
                     "retry_after_cap", "slowdown_half_life", "slowdown_interval",
                     "forgive_after"):
            _check_number(self, name, minimum=0.0, strict=True)
        _check_number(self, "slowdown_cap", minimum=1.0, strict=False)
        for name in ("prefix", "scope"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "{" in value or "}" in value:
                # A brace would move the cluster hash tag and split one call's keys across slots.
                raise ConfigError(f"{name} must be non-empty and without braces, got {value!r}")


def _check_number(config: LimiterConfig, name: str, *, minimum: float, strict: bool) -> None:
    value = getattr(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


MAX_INTERVAL_US = 10**15


def to_us(seconds: float) -> int:
    return round(seconds * US)


def interval_us(rate: float) -> int:
    """The GCRA emission interval T for a rate; 0 means no limit.

    Rounded up so integer microseconds never let more than `rate` through.
    """
    if rate <= 0:
        return 0
    # A vanishing rate (1e-300/s) is an interval of ~31 years, not an overflow: the scripts
    # keep every number exact below 2^53 us.
    return max(1, math.ceil(min(round(US / rate, 6), MAX_INTERVAL_US)))


def slowdown_life_us(config: LimiterConfig) -> int:
    """How long a host key must survive its last incident for the incident to keep mattering.

    Long enough for the incident count to be forgiven and for m to decay below M_EPSILON.
    """
    excess = max(config.slowdown_cap - 1.0, M_EPSILON)
    decay = config.slowdown_half_life * max(math.log2(excess / M_EPSILON), 0.0)
    return to_us(max(config.forgive_after, decay))


def global_key(config: LimiterConfig) -> str:
    return f"{config.prefix}:{HASH_TAG}:g:{config.scope}"


def host_key(config: LimiterConfig, host: str) -> str:
    """The key of one host's bucket. The host string is used as given: canonicalize it upstream."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    return f"{config.prefix}:{HASH_TAG}:h:{host}"


def acquire_argv(config: LimiterConfig) -> tuple[int, ...]:
    """ARGV[1..10] of acquire.lua (ARGV[11], the test clock, is appended per call)."""
    return (
        interval_us(config.qps),
        config.burst,
        interval_us(config.per_host_qps),
        config.per_host_burst,
        to_us(config.host_horizon),
        to_us(config.global_horizon),
        to_us(config.slowdown_interval),
        to_us(config.slowdown_half_life),
        slowdown_life_us(config),
        TTL_SLACK_MS,
    )


def penalize_argv(
    config: LimiterConfig, retry_after: float | None, jitter: float
) -> tuple[int | str, ...]:
    """ARGV[1..10] of penalize.lua (ARGV[11], the test clock, is appended per call)."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    if retry_after is None or not math.isfinite(retry_after):
        retry_us = _UNSET_RETRY_AFTER
    else:
        retry_us = max(0, to_us(retry_after))  # a negative Retry-After means "now"
    return (
        retry_us,
        to_us(config.penalty_base),
        to_us(config.penalty_cap),
        to_us(config.retry_after_cap),
        repr(float(jitter)),
        repr(float(config.slowdown_cap)),
        to_us(config.slowdown_half_life),
        to_us(config.forgive_after),
        slowdown_life_us(config),
        TTL_SLACK_MS,
    )


def clock_arg(now_us: int | None) -> str:
    """The last ARGV of both scripts: empty means Redis TIME; an integer is a test clock."""
    return "" if now_us is None else str(int(now_us))


def draw_jitter() -> float:
    """Client-side jitter in [0, 1): scripts stay deterministic, callers spread their back-off."""
    return random.random()


def decode_grants(reply: Sequence[Any], count: int) -> list[Grant]:
    """Turn acquire.lua's flat [decision, wait, ...] reply into grants."""
    if len(reply) != 2 * count:
        raise ValueError(f"acquire.lua answered {len(reply)} numbers for {count} hosts")
    return [
        Grant(Decision(int(reply[i])), max(0, int(reply[i + 1]))) for i in range(0, len(reply), 2)
    ]


def decode_state(raw: dict[Any, Any], ttl_ms: int) -> dict[str, Any]:
    """A bucket hash as typed values (absent fields take their neutral value), plus its PTTL."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    state: dict[str, Any] = {
        name: int(float(fields.get(name, 0)))
        for name in ("tat", "pen", "mts", "n", "lts", "cd", "cdx")
    }
    state["m"] = float(fields.get("m", 1.0))
    state["ttl_ms"] = int(ttl_ms)
    return state


def decayed_factor(m: float, mts: int, now_us: int, half_life: float) -> float:
    """The slow-down factor at `now_us`, as the scripts compute it (exposed for tests)."""
    if m <= 1.0:
        return 1.0
    elapsed = max(0, now_us - mts) / US
    value = 1.0 + (m - 1.0) * 0.5 ** (elapsed / half_life)
    return 1.0 if value - 1.0 < M_EPSILON else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@cache
def script_source(name: str) -> str:
    """The text of a packaged Lua script, read once per process."""
    return (resources.files("crawler.ratelimit") / "lua" / name).read_text(encoding="utf-8")


@contextmanager
def backend_errors() -> Iterator[None]:
    """Map redis-py's connection failures to our BackendUnavailable, in one place."""
    try:
        yield
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,  # after a failover: the caller reconnects or falls back
    ) as exc:
        raise BackendUnavailable(f"rate limiter backend unavailable: {exc}") from exc
