"""The local Redis server: real, on loopback, and its data survives a restart (AOF), as production's does."""

from __future__ import annotations

from pathlib import Path

import redis

from service.localstack import start_redis


def test_redis_keeps_data_across_a_restart(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(server.url)
        client.set("cohort:1", "running")
        client.rpush("queue", "subject-1", "subject-2")
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        server.stop()
    assert not server.ping()
    again = start_redis(tmp_path / "redis", port=server.port)
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("cohort:1") == b"running"
        assert client.lrange("queue", 0, -1) == [b"subject-1", b"subject-2"]
    finally:
        again.stop()
