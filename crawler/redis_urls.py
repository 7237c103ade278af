"""What a Redis URL points at: one server, a Redis Cluster, or a master found through Sentinel.

Pure parsing (no I/O), so settings can refuse a bad URL in one line before anything connects
and `crawler.backend` only builds the client the URL describes.

    redis://host:6379/0, rediss://..., unix:///path    one server (redis-py's own URL forms)
    redis+cluster://[user:pass@]host:port[,host:port...][?option=...]
    rediss+cluster://...                               a Redis Cluster (TLS), seed nodes listed
    redis+sentinel://[user:pass@]host:port[,host:port...]/<service>[/<db>][?option=...]
    rediss+sentinel://...                              the master Sentinel names (TLS to it)

The userinfo is the data nodes' login. Sentinel's own login, when it has one, is given as
`sentinel_username` / `sentinel_password` query options. A cluster has one database (0).

Kombu (the Celery broker) speaks Sentinel with its own URL form (`sentinel://h:p;sentinel://
h2:p2/db` plus a `master_name` transport option): `kombu_broker()` translates. No Celery
transport speaks Redis Cluster, so a cluster needs a separate broker (`broker_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

Kind = Literal["single", "cluster", "sentinel"]
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})
ALL_SCHEMES = SINGLE_SCHEMES | CLUSTER_SCHEMES | SENTINEL_SCHEMES
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# Query options we read ourselves; any other option is refused (a typo must not be ignored).
SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
TIMEOUT_OPTIONS = frozenset({"socket_timeout", "socket_connect_timeout"})
TLS_OPTIONS = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"})


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. `url` is kept as given (a single server's URL goes to redis-py)."""

    kind: Kind
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seeds, or the sentinels
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)

    @property
    def sentinel_login(self) -> dict[str, str]:
        """Keyword arguments for the connections to the sentinels themselves."""
        login = {k.removeprefix("sentinel_"): v for k, v in self.options.items()
                 if k in SENTINEL_OPTIONS}
        return login

    @property
    def data_options(self) -> dict[str, object]:
        """Connection options for the data nodes (timeouts as floats, TLS flags as given)."""
        out: dict[str, object] = {}
        for k, v in self.options.items():
            if k in TIMEOUT_OPTIONS:
                out[k] = float(v)
            elif k == "ssl_check_hostname":
                out[k] = v.lower() in ("1", "true", "yes")
            elif k in TLS_OPTIONS:
                out[k] = v
        return out


def parse_redis_url(url: str) -> RedisTarget:
    """The target of `url`; ValueError with a one-line reason when it cannot be one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in SINGLE_SCHEMES:
        return RedisTarget("single", url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES | SENTINEL_SCHEMES:
        expected = ", ".join(f"{s}://" for s in sorted(ALL_SCHEMES))
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} (expected {expected})")
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    default_port = DEFAULT_PORT if kind == "cluster" else DEFAULT_SENTINEL_PORT
    nodes = tuple(_host_port(item, default_port) for item in hostlist.split(","))
    options = _options(parts.query, kind)
    path = [p for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == "cluster":
        if path and path != ["0"]:
            raise ValueError("a Redis Cluster has only database 0 (drop the path)")
    else:
        if not path:
            raise ValueError("no master name in the URL (redis+sentinel://host:26379/mymaster)")
        if len(path) > 2:
            raise ValueError("too many path parts (expected /<master name>[/<db>])")
        service = unquote(path[0])
        if len(path) == 2:
            if not path[1].isdigit():
                raise ValueError(f"the database must be a number, got {path[1][:20]!r}")
            db = int(path[1])
    return RedisTarget(kind, url, nodes, service, db, username, password,
                       tls=scheme.startswith("rediss"), options=options)


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise ValueError("no host in the URL (e.g. redis+cluster://127.0.0.1:7000)")
    if item.startswith("["):  # [::1]:7000
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"no host in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {item!r}")
    return host, int(port_text)


def _options(query: str, kind: Kind) -> dict[str, str]:
    allowed = TIMEOUT_OPTIONS | TLS_OPTIONS | (SENTINEL_OPTIONS if kind == "sentinel" else set())
    options = dict(parse_qsl(query, keep_blank_values=True))
    for name, value in options.items():
        if name not in allowed:
            raise ValueError(f"unsupported option {name!r} in the URL "
                             f"(known: {', '.join(sorted(allowed))})")
        if name in TIMEOUT_OPTIONS:
            try:
                float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    return options


def kombu_broker(url: str) -> tuple[str, dict[str, object]]:
    """(broker URL, transport options) for Celery: a Sentinel URL in kombu's own form."""
    target = parse_redis_url(url)
    if target.kind != "sentinel":
        return url, {}
    login = ""
    if target.password is not None:
        login = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    scheme = "sentinel"
    hosts = ";".join(f"{scheme}://{login}{_netloc(h, p)}/{target.db}" for h, p in target.nodes)
    options: dict[str, object] = {"master_name": target.service}
    if target.sentinel_login:
        options["sentinel_kwargs"] = dict(target.sentinel_login)
    return hosts, options


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def broker_for(redis_url: str) -> str:
    """The broker a job shares when none is configured: the same Redis, unless it is a
    cluster (no Celery transport speaks Redis Cluster; ValueError says what to do)."""
    if parse_redis_url(redis_url).kind == "cluster":
        raise ValueError("a Redis Cluster cannot be the Celery broker: set CRAWLER_BROKER_URL "
                         "(amqp://... or a plain redis://host:port/0)")
    return redis_url
