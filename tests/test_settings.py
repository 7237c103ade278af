"""Settings precedence, validation messages and credential masking."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from crawler.errors import ConfigError
from crawler.settings import Settings, load_settings, mask_url

REPO = Path(__file__).resolve().parent.parent


def test_precedence_defaults_file_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("qps = 1.0\nburst = 1\nretries = 1\nconcurrency = 7\n")
    monkeypatch.setenv("CRAWLER_BURST", "2")
    monkeypatch.setenv("CRAWLER_RETRIES", "2")
    s = load_settings(cfg, retries=5, qps=None)
    assert s.concurrency == 7  # file over default
    assert s.qps == 1.0  # None flag = not given
    assert s.burst == 2  # env over file
    assert s.retries == 5  # flag over env
    assert s.timeout == 30.0  # default


def test_config_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('mode = "threads"\n')
    monkeypatch.setenv("CRAWLER_CONFIG", str(cfg))
    assert load_settings().mode == "threads"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"qps": -1}, "invalid setting qps", id="negative-qps"),
        pytest.param({"concurrency": 0}, "invalid setting concurrency", id="zero-concurrency"),
        pytest.param({"mode": "fibers"}, "invalid setting mode", id="bad-mode"),
        pytest.param({"redis_url": "http://x"}, "unsupported URL scheme", id="bad-scheme"),
        pytest.param({"allowed_networks": ["10.0.0.0/33"]}, "allowed_networks", id="bad-cidr"),
        pytest.param({"headers": {"Bad Name": "x"}}, "invalid header", id="bad-header"),
    ],
)
def test_invalid_values_are_one_line(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("qsp = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'qsp'"):
        load_settings(cfg)


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("qps = = 3\n")
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")


def test_password_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(redis_url="redis://user:s3cret@db.example:6380/1")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)
    monkeypatch.setenv("CRAWLER_BROKER_URL", "ftp://u:s3cret@h/")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://u:pw@h/0", "rediss://u:***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://guest:guest@[::1]:5672//", "amqp://guest:***@[::1]:5672//"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_broker_defaults_to_redis() -> None:
    s = load_settings(redis_url="redis://h/0")
    assert s.effective_broker_url == "redis://h/0"
    assert load_settings(redis_url="redis://h/0", broker_url="amqp://x//").effective_broker_url \
        == "amqp://x//"


def test_shipped_config_lists_every_setting_with_its_default() -> None:
    text = (REPO / "config" / "crawler.toml").read_text()
    data = tomllib.loads(text)
    defaults = Settings()
    for name in Settings.model_fields:
        assert f"{name} =" in text or f"[{name}]" in text, f"{name} missing from crawler.toml"
        if name in data and name != "headers":
            assert data[name] == getattr(defaults, name), name
