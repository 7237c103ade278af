"""What producers and workers tell Celery for each broker: Redis, Sentinel, RabbitMQ."""

from __future__ import annotations

import pytest

from crawler.broker import celery_config
from crawler.errors import ConfigError
from crawler.settings import is_amqp, load_settings


def test_a_sentinel_broker_becomes_kombus_form_with_its_master() -> None:
    cfg = celery_config("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2")
    assert cfg["broker_url"] == ("sentinel://:pw@10.0.0.1:26379/2;"
                                 "sentinel://:pw@10.0.0.2:26380/2")
    assert cfg["broker_transport_options"] == {"master_name": "mymaster"}
    assert "broker_use_ssl" not in cfg
    tls = celery_config("rediss+sentinel://s:1/m")
    assert tls["broker_use_ssl"]


def test_plain_redis_and_amqp_urls_pass_through() -> None:
    for url in ("redis://h:6379/0", "amqp://guest:guest@h:5672/vh"):
        cfg = celery_config(url)
        assert cfg["broker_url"] == url and "broker_transport_options" not in cfg
    assert is_amqp("amqp://h//") and is_amqp("pyamqp://h//") and not is_amqp("redis://h/0")


@pytest.mark.parametrize("queue_type, args", [("classic", None),
                                              ("quorum", {"x-queue-type": "quorum"})])
def test_producer_and_worker_declare_the_same_queue(queue_type: str, args: object) -> None:
    (queue,) = celery_config("amqp://h//", queue_type)["task_queues"]  # type: ignore[arg-type]
    assert queue.name == "crawler" and queue.durable and queue.queue_arguments == args


def test_quorum_queues_need_rabbitmq() -> None:
    with pytest.raises(ConfigError, match="quorum queues need a RabbitMQ broker"):
        load_settings(redis_url="redis://h:6379/0", broker_queue_type="quorum")
    s = load_settings(redis_url="redis://h:6379/0", broker_url="amqp://h//",
                      broker_queue_type="quorum")
    assert s.broker_queue_type == "quorum"


def test_workers_keep_sentinels_master_beside_redis_redelivery_and_cap_batches_on_amqp(
) -> None:
    from workers.app import (
        AMQP_BATCH_SOFT_LIMIT,
        BATCH_SOFT_LIMIT,
        batch_soft_limit,
        broker_options,
    )

    url = "redis+sentinel://s:1/m/0"
    opts = broker_options(url, celery_config(url))["broker_transport_options"]
    assert opts["master_name"] == "m" and opts["visibility_timeout"] > 0
    assert broker_options("amqp://h//", celery_config("amqp://h//")) == {"broker_heartbeat": 30}
    # RabbitMQ's default consumer_timeout is 30 min: a batch hands back its rest before it
    assert batch_soft_limit("amqp://h//") == AMQP_BATCH_SOFT_LIMIT < 30 * 60
    assert batch_soft_limit("redis://h/0") == BATCH_SOFT_LIMIT
