"""The Redis resource: a URL when given, otherwise an embedded server it starts itself."""

from __future__ import annotations

from pathlib import Path

from resources.redis_store import RedisResource, stop_redis_server
from tests.conftest import free_port


def test_url_is_used_when_set(redis_url: str) -> None:
    client = RedisResource(url=redis_url).get_client()
    assert client.ping()


def test_embedded_server_starts_once_and_persists_streams(tmp_path: Path) -> None:
    port = free_port()
    res = RedisResource(embedded_port=port, embedded_dir=str(tmp_path))
    try:
        client = res.get_client()
        client.xadd("signups", {"user_id": "u1"})
        again = RedisResource(embedded_port=port, embedded_dir=str(tmp_path)).get_client()
        assert again.xlen("signups") == 1
        assert (tmp_path / "redis.pid").exists()
    finally:
        stop_redis_server(tmp_path)
