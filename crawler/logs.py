"""How the crawler's processes log: one handler on the root logger, text or JSON lines.

`setup_logging` is called once per process: by the `crawler` command (`cli.main`) and by each
Celery worker (Celery's `setup_logging` signal, `workers/app.py`), so Celery's own loggers
("Task ... received", "... succeeded") share the format and the mask.

- text: `2025-01-31T12:00:00.123Z WARNING crawler.runner: message key=value` (scalar extra
  fields appended as key=value), then the traceback, if any.
- json: one object a line: `ts` (ISO 8601, UTC, ms), `level`, `logger`, `msg`, `exc` (the
  traceback, when there is one) and every `extra={...}` field the caller passed.

Every record is masked before it is written (`MaskCredentials`, on the handler): passwords in
URLs (`scheme://user:***@host`), Authorization/Proxy-Authorization/Cookie header values and
password=/token=/secret=-style parameters, in the message, its arguments, the traceback and
the extra fields. Per-URL detail is logged at DEBUG only; a warning that could repeat for
every URL (during an outage, say) goes through a `Throttle`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal, cast

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter, orjson_default

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
MASK = "***"

# Attributes every LogRecord has (and what formatters add): the rest are `extra=` fields.
_STANDARD = frozenset(RESERVED_ATTRS) | {"message", "asctime", "taskName"}
# How deep the mask looks into extra fields that are dicts, lists or tuples.
_MASK_DEPTH = 4

# scheme://NETLOC: the userinfo is everything up to the netloc's last "@" (as urlsplit and
# settings.mask_url split it), so a password holding "@" is masked whole.
_URL_NETLOC = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/?#]+)")
# A header that carries a credential, written `Name: value`, `Name=value` or as a dict's
# repr (`'Name': 'value'`): a quoted value is masked to its closing quote, else to the end of
# the line.
_HEADER = re.compile(
    r"""(?ix)\b((?:proxy-)?authorization|(?:set-)?cookie|x-api-key)
    (['"]?\s*[:=]\s*)
    (?:(['"])(?:\\.|(?!\3).)*\3|[^\r\n]*)"""
)
# password=..., api_key=..., access_token=... (in query strings, form bodies, key=value text)
_SECRET_PARAM = re.compile(
    r"(?i)\b([\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|auth|sig))"
    r"=([^&;#\s'\"]+)"
)
# Dict keys (headers, extra fields) whose values are credentials whatever they look like.
_SECRET_KEY = re.compile(
    r"(?i)(?:proxy-)?authorization|(?:set-)?cookie|x-api-key"
    r"|[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key)"
)


def _mask_netloc(m: re.Match[str]) -> str:
    userinfo, at, hostport = m.group(2).rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or not password.strip("*"):  # no password, or already masked
        return m.group(0)
    return f"{m.group(1)}{user}:{MASK}@{hostport}"


def _mask_header(m: re.Match[str]) -> str:
    quote = m.group(3) or ""
    return f"{m.group(1)}{m.group(2)}{quote}{MASK}{quote}"


def mask(text: str) -> str:
    """`text` with the credentials it shows replaced by ***."""
    if "://" in text:
        text = _URL_NETLOC.sub(_mask_netloc, text)
    if ":" in text or "=" in text:
        text = _HEADER.sub(_mask_header, text)
    if "=" in text:
        text = _SECRET_PARAM.sub(rf"\1={MASK}", text)
    return text


def mask_value(value: Any, depth: int = 0) -> Any:
    """A str masked; a dict, list or tuple copied with its strings masked (and the values of
    credential-named keys replaced); anything else as it is."""
    if isinstance(value, str):
        return mask(value)
    if depth >= _MASK_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.fullmatch(k)
                else mask_value(v, depth + 1) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(mask_value(v, depth + 1) for v in value)
    return value


class MaskCredentials(logging.Filter):
    """Masks credentials in a record before any formatter sees it (attached to the handler
    `setup_logging` installs). The message is formatted here (msg % args) and masked; the
    traceback is rendered into `exc_text`, masked, which formatters then print as it is."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: say so, without repeating them (secrets)
            message = f"{record.msg} (log arguments that do not fit the message)"
        record.msg, record.args = mask(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = (MASK if _SECRET_KEY.fullmatch(key)
                                        else mask_value(value))
        return True


def iso_ts(created: float) -> str:
    """2025-01-31T12:00:00.123Z: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message key=value ...`: scalar extra fields appended (dicts and
    lists, like Celery's `data`, repeat the message: only JSON shows them)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = f"{iso_ts(record.created)} {super().formatMessage(record)}"
        extras = [f"{k}={v}" if isinstance(v, str) and v and not any(c.isspace() for c in v)
                  else f"{k}={v!r}" for k, v in _extras(record).items()
                  if v is None or isinstance(v, str | int | float | bool)]
        return " ".join([line, *extras])


def _json_default(obj: Any) -> Any:
    """What orjson cannot encode (an exception, bytes, an object), as python-json-logger
    encodes it, masked: its str() may hold a URL with a password."""
    return mask_value(orjson_default(obj))


class JsonFormatter(OrjsonFormatter):
    """One JSON object a line: ts, level, logger, msg, exc (when there is one), extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg",
                           "exc_info": "exc", "stack_info": "stack"},
            json_default=_json_default,
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["ts"] = iso_ts(record.created)  # first: the line reads ts, level, logger, ...
        super().add_fields(log_data, record, message_dict)

    def format(self, record: logging.LogRecord) -> str:
        # python-json-logger formats `exc_info` afresh when a record has one; the masked
        # `exc_text` MaskCredentials rendered is what must be printed.
        exc_info = record.exc_info
        if record.exc_text:
            record.exc_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info = exc_info


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a replaced stream)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def setup_logging(level: str | int, fmt: str = "text", stream: IO[str] | None = None
                  ) -> logging.Handler:
    """Configure the root logger: `level`, and one handler writing `fmt` lines to `stream`
    (default: sys.stderr, looked up at each write) through `MaskCredentials`.

    A second call replaces the handler the first one installed; handlers installed by
    others (pytest's, say) are kept. Raises ValueError for an unknown level or format.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected text or json)")
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(
        stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(MaskCredentials())
    handler.set_name("crawler")
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for old in list(root.handlers):
        if old.get_name() == "crawler":
            root.removeHandler(old)
    root.addHandler(handler)
    return handler


def format_from_env(default: LogFormat = "text") -> LogFormat:
    """CRAWLER_LOG_FORMAT when it names a format, else `default`: for the CLI, which sets up
    logging before it loads (and validates) the settings."""
    value = os.environ.get("CRAWLER_LOG_FORMAT", "").strip().lower()
    return cast(LogFormat, value) if value in LOG_FORMATS else default


class Throttle:
    """At most one log line per `every` seconds for an event that could repeat for every URL
    (a Redis hiccup seen by each fetch): the others go to DEBUG, and the next line that is
    let through says how many were held back. Thread-safe."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0

    def log(self, logger: logging.Logger, level: int, msg: str, *args: Any,
            **kwargs: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                held = -1
            else:
                self._next = now + self.every
                held, self._held = self._held, 0
        if held < 0:
            logger.debug(msg, *args, **kwargs)
        elif held:
            logger.log(level, f"{msg} (and %d more like it since the last such line)",
                       *args, held, **kwargs)
        else:
            logger.log(level, msg, *args, **kwargs)
