"""Redis URLs for one server, a Redis Cluster and Sentinel: parsing, errors, the broker form."""

from __future__ import annotations

import pytest

from crawler.errors import ConfigError
from crawler.redis_urls import broker_for, kombu_broker, parse_redis_url
from crawler.settings import load_settings


@pytest.mark.parametrize(("url", "kind", "nodes", "service", "db"), [
    pytest.param("redis://h:1/2", "single", (), "", 0, id="single"),
    pytest.param("redis+cluster://a:7000,b:7001", "cluster", (("a", 7000), ("b", 7001)), "", 0,
                 id="cluster-seeds"),
    pytest.param("redis+cluster://a", "cluster", (("a", 6379),), "", 0, id="cluster-default-port"),
    pytest.param("redis+cluster://[::1]:7000/0", "cluster", (("::1", 7000),), "", 0,
                 id="cluster-ipv6-db0"),
    pytest.param("redis+sentinel://s1:26379,s2/mymaster", "sentinel",
                 (("s1", 26379), ("s2", 26379)), "mymaster", 0, id="sentinel-default-port"),
    pytest.param("redis+sentinel://s1:1/m/3", "sentinel", (("s1", 1),), "m", 3, id="sentinel-db"),
])
def test_parse(url: str, kind: str, nodes: tuple, service: str, db: int) -> None:
    t = parse_redis_url(url)
    assert (t.kind, t.nodes, t.service, t.db) == (kind, nodes, service, db)


def test_login_tls_and_options() -> None:
    t = parse_redis_url("rediss+sentinel://u:p%40ss@s:1/m?sentinel_password=sp&socket_timeout=3")
    assert (t.username, t.password, t.tls) == ("u", "p@ss", True)
    assert t.sentinel_login == {"password": "sp"}
    assert t.data_options == {"socket_timeout": 3.0}


@pytest.mark.parametrize(("url", "message"), [
    pytest.param("redis+cluster://a:7000/1", "only database 0", id="cluster-db"),
    pytest.param("redis+cluster://a:70000", "bad port", id="port-range"),
    pytest.param("redis+cluster://a:1,,b:2", "no host", id="empty-host"),
    pytest.param("redis+sentinel://s:1", "no master name", id="no-service"),
    pytest.param("redis+sentinel://s:1/m/x", "must be a number", id="db-not-number"),
    pytest.param("redis+sentinel://s:1/m/0/9", "too many path parts", id="long-path"),
    pytest.param("redis+cluster://a:1?foo=1", "unsupported option 'foo'", id="unknown-option"),
    pytest.param("redis+cluster://a:1?sentinel_password=x", "unsupported option",
                 id="sentinel-option-on-cluster"),
    pytest.param("redis+cluster://a:1?socket_timeout=soon", "number of seconds", id="timeout"),
    pytest.param("redis+clusters://a:1", "unsupported URL scheme", id="scheme-typo"),
])
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_settings_refuse_a_bad_topology_url_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(redis_url="redis+sentinel://s:1")
    assert str(err.value).startswith("invalid setting redis_url: no master name")
    assert "\n" not in str(err.value)


def test_settings_mask_the_password_of_a_cluster_url() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(redis_url="redis+cluster://u:secret@a:1,b:2/5")
    assert "secret" not in str(err.value)
    assert "***" in str(err.value)


def test_kombu_form_of_a_sentinel_url() -> None:
    url, options = kombu_broker("redis+sentinel://:pw@s1:1,s2:2/mymaster/4"
                                "?sentinel_password=sp")
    assert url == "sentinel://:pw@s1:1/4;sentinel://:pw@s2:2/4"
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"password": "sp"}}
    assert kombu_broker("redis://h:1/0") == ("redis://h:1/0", {})


def test_a_cluster_is_never_the_broker() -> None:
    with pytest.raises(ValueError, match="CRAWLER_BROKER_URL"):
        broker_for("redis+cluster://a:1")
    assert broker_for("redis+sentinel://s:1/m") == "redis+sentinel://s:1/m"
    settings = load_settings(redis_url="redis+cluster://a:1")
    with pytest.raises(ConfigError, match="cannot be the Celery broker"):
        settings.shared_broker_url  # noqa: B018
    assert load_settings(redis_url="redis+cluster://a:1",
                         broker_url="redis://b:1/0").shared_broker_url == "redis://b:1/0"


def test_a_cluster_url_cannot_name_the_broker() -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        load_settings(broker_url="redis+cluster://a:1")
