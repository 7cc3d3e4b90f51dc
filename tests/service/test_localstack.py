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


def test_a_stack_that_fails_to_start_leaves_nothing_running(tmp_path: Path) -> None:
    """An API that cannot start (a setting below its minimum): start() raises, naming the log, and the servers
    and worker it had started are stopped (none outlives the failed start)."""
    import pytest

    from service.localstack import ServerError, free_port
    from service.stack import LocalStack

    stack = LocalStack(tmp_path / "data", {"lab": "key"}, port=free_port(),
                       settings={"BRAINSYNTH_DEVICE": "cpu", "BRAINSYNTH_MAX_BODY_BYTES": "5"})  # fmt: skip
    with pytest.raises(ServerError, match="the API exited"):
        stack.start()
    assert stack.redis is not None and stack.s3 is not None and stack.worker_processes
    assert stack.redis.process.poll() is not None and stack.s3.process.poll() is not None
    assert all(process.poll() is not None for process in stack.worker_processes)
