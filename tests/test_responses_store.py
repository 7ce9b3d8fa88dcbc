"""Stored responses in SQLite (a real file under ``tmp_path``), the ``[responses]`` config,
and the store the gateway opens. Wall-clock time is an injected clock; the Redis store is
tested against a real server in ``tests/e2e/test_responses_redis.py``."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.config import build_config
from gateway.errors import ConfigError, error_body
from gateway.responses import (
    ResponsesDatabaseError,
    ResponseStoreUnavailable,
    SQLiteResponseStore,
    StoredResponse,
    check_responses_database,
)
from gateway.responses.sqlite import open_sqlite_response_store
from gateway.responses.store import encode
from gateway.service import open_gateway

DAY = 86400.0
START = 1_750_000_000.0


class Clock:
    """Wall-clock time that moves only when a test moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(id: str = "resp_1", team: str = "alpha", text: str = "hello") -> StoredResponse:
    return StoredResponse(
        id=id,
        team=team,
        created_at=int(START),
        input_items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        ],
        history=[{"type": "message", "role": "user", "content": "earlier"}],
        response={
            "id": id,
            "object": "response",
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi ✓"}]}],
            "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
        },
    )


def config(**tables: Any) -> Any:
    return build_config(
        {
            "backends": {"b": {"type": "openai", "url": "http://127.0.0.1:9/v1"}},
            "routes": {"chat": {"backend": "b"}},
            **tables,
        },
        environ={},
    )


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    return count


# -- start-up: an unusable path is one line that names it --------------------------------


def test_unusable_database_is_one_line_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    for path, why in [
        (tmp_path / "missing" / "r.sqlite", f"directory {tmp_path / 'missing'} does not exist"),
        (tmp_path, "it is a directory"),
        (tmp_path / "file" / "r.sqlite", f"{tmp_path / 'file'} is not a directory"),
        (tmp_path / "junk.sqlite", "file is not a database"),
    ]:
        with pytest.raises(ResponsesDatabaseError) as caught:
            check_responses_database(path)
        assert str(caught.value) == f"responses.database {path}: cannot open it: {why}"
    with pytest.raises(ResponsesDatabaseError, match=r"^responses.database /proc/r.sqlite: cannot"):
        check_responses_database("/proc/r.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "junk.sqlite"]


async def test_gateway_does_not_start_on_an_unusable_database(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "r.sqlite"
    with pytest.raises(ResponsesDatabaseError) as caught:
        async with open_gateway(config(responses={"database": str(path)})):
            pytest.fail("started")
    assert str(caught.value) == (
        f"responses.database {path}: cannot open it: directory {path.parent} does not exist"
    )
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database " * 100)
    with pytest.raises(ResponsesDatabaseError, match=f"^responses.database {junk}: cannot open"):
        async with open_sqlite_response_store(junk, ttl=DAY, max_bytes=1 << 20):
            pytest.fail("opened")


async def test_gateway_opens_the_configured_file_only_when_a_response_is_stored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    async with open_gateway(config(responses={"database": str(path)})) as gateway:
        store = gateway.responses
        assert isinstance(store, SQLiteResponseStore)
        assert store.path == path
        assert await store.get("", "resp_1") is None
        assert await store.delete("", "resp_1") is False
        assert not path.exists()  # a gateway that serves no /v1/responses leaves no file
        assert await store.put(stored(team="")) is True
        assert path.exists()
    async with open_gateway(config(responses={"database": str(path)})) as gateway:
        assert await gateway.responses.get("", "resp_1") == stored(team="")


# -- the store ---------------------------------------------------------------------------


async def test_put_get_delete(tmp_path: Path) -> None:
    async with open_sqlite_response_store(tmp_path / "r.sqlite", ttl=DAY, max_bytes=1 << 20) as s:
        first = stored()
        assert await s.put(first) is True
        got = await s.get("alpha", "resp_1")
        assert got == first
        assert got is not first
        replaced = stored(text="again")
        assert await s.put(replaced) is True
        assert await s.get("alpha", "resp_1") == replaced
        assert await s.delete("alpha", "resp_1") is True
        assert await s.get("alpha", "resp_1") is None
        assert await s.delete("alpha", "resp_1") is False
        assert (s.failed_puts, s.oversized_puts) == (0, 0)


async def test_a_lone_surrogate_is_stored_and_read_back(tmp_path: Path) -> None:
    # A model's answer cut inside a surrogate pair (as an upstream escapes it) cannot be
    # UTF-8: the record is written with ASCII escapes, and reads back the same.
    async with open_sqlite_response_store(tmp_path / "r.sqlite", ttl=DAY, max_bytes=1 << 20) as s:
        cut = stored(text="half \ud83d")
        assert await s.put(cut) is True
        assert await s.get("alpha", "resp_1") == cut
        assert (s.failed_puts, s.oversized_puts) == (0, 0)


async def test_another_teams_id_is_not_found(tmp_path: Path) -> None:
    async with open_sqlite_response_store(tmp_path / "r.sqlite", ttl=DAY, max_bytes=1 << 20) as s:
        await s.put(stored(team="alpha", text="alpha's"))
        assert await s.get("beta", "resp_1") is None
        assert await s.get("", "resp_1") is None  # auth off is no team, not every team
        assert await s.delete("beta", "resp_1") is False
        assert await s.get("alpha", "resp_1") == stored(team="alpha", text="alpha's")
        # The same id in two teams is two records.
        await s.put(stored(team="beta", text="beta's"))
        assert await s.delete("alpha", "resp_1") is True
        assert await s.get("beta", "resp_1") == stored(team="beta", text="beta's")


async def test_expired_is_never_returned_and_purged_later(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    clock = Clock()
    async with open_sqlite_response_store(
        path, ttl=30 * DAY, max_bytes=1 << 20, purge_interval=DAY, clock=clock
    ) as s:
        await s.put(stored("resp_old"))
        clock.now += 30 * DAY - 1
        assert await s.get("alpha", "resp_old") == stored("resp_old")
        await s.put(stored("resp_new"))
        clock.now += 1
        assert await s.get("alpha", "resp_old") is None
        assert await s.delete("alpha", "resp_old") is False
        assert await s.get("alpha", "resp_new") == stored("resp_new")
        assert rows(path) == 2  # not yet purged: expired rows go with a later write
        clock.now += DAY
        await s.put(stored("resp_3"))
        assert rows(path) == 2  # resp_old purged
        clock.now += 30 * DAY
    # Opening purges too.
    async with open_sqlite_response_store(path, ttl=30 * DAY, max_bytes=1 << 20, clock=clock):
        assert rows(path) == 0


async def test_a_response_over_the_cap_is_not_stored_and_the_caller_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    size = len(encode(stored(), START + DAY))
    async with open_sqlite_response_store(
        tmp_path / "r.sqlite", ttl=DAY, max_bytes=size - 1, clock=clock
    ) as s:
        assert await s.put(stored()) is False
        assert await s.get("alpha", "resp_1") is None
        assert (s.oversized_puts, s.failed_puts) == (1, 0)
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.responses"]
    assert line.startswith(f"response resp_1 of team 'alpha' not stored: {size} bytes of JSON")
    async with open_sqlite_response_store(
        tmp_path / "r.sqlite", ttl=DAY, max_bytes=size, clock=clock
    ) as s:
        assert await s.put(stored()) is True  # the cap itself fits


async def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    async with (
        open_sqlite_response_store(path, ttl=DAY, max_bytes=1 << 20) as one,
        open_sqlite_response_store(path, ttl=DAY, max_bytes=1 << 20) as two,
    ):
        await one.put(stored("resp_a"))
        assert await two.get("alpha", "resp_a") == stored("resp_a")
        assert await two.delete("alpha", "resp_a") is True
        assert await one.get("alpha", "resp_a") is None


async def test_a_database_that_breaks_is_logged_once_and_found_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.sqlite"
    async with open_sqlite_response_store(path, ttl=DAY, max_bytes=1 << 20) as s:
        assert await s.put(stored("resp_1")) is True
        path.write_bytes(b"not a database " * 100)  # overwritten under the open store
        assert await s.put(stored("resp_2")) is False
        assert await s.put(stored("resp_3")) is False
        assert s.failed_puts == 2
        with pytest.raises(ResponseStoreUnavailable) as caught:
            await s.get("alpha", "resp_1")
        assert caught.value.status == 503
        assert error_body(caught.value)["error"]["code"] == "response_store_unavailable"
        with pytest.raises(ResponseStoreUnavailable):
            await s.delete("alpha", "resp_1")
        path.unlink()
        assert await s.put(stored("resp_4")) is True
        assert await s.get("alpha", "resp_4") == stored("resp_4")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"responses cannot be stored in responses.database {path} until")
    assert lines[1].startswith(f"stored responses cannot be read from responses.database {path}")
    assert lines[2].startswith(f"responses stored in responses.database {path} again after ")
    assert lines[2].endswith("; 2 response(s) not stored")


# -- config ------------------------------------------------------------------------------


def test_responses_table_defaults_and_the_file_beside_the_usage_database() -> None:
    settings = config().responses
    assert (settings.database, settings.ttl, settings.max_bytes) == (None, 30 * DAY, 16 << 20)
    assert settings.database_path(config().usage) == Path("gateway-responses.sqlite")
    cfg = config(usage={"database": "/var/lib/gw/usage.sqlite"})
    assert cfg.responses.database_path(cfg.usage) == Path("/var/lib/gw/gateway-responses.sqlite")
    cfg = config(responses={"database": "/data/r.sqlite", "ttl": 3600, "max_bytes": 1024})
    assert cfg.responses.database_path(cfg.usage) == Path("/data/r.sqlite")
    assert (cfg.responses.ttl, cfg.responses.max_bytes) == (3600, 1024)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"responses": {"databse": "x"}}, "responses.databse: unknown key"),
        ({"responses": {"ttl": 0}}, "responses.ttl: Input should be greater than 0"),
        ({"responses": {"max_bytes": -1}}, "responses.max_bytes: Input should be greater than 0"),
        (
            {"responses": {"max_bytes": 1 << 30}},
            "responses.max_bytes: Input should be less than or equal to 536870912",
        ),
        ({"responses": {"database": 3}}, "responses.database: Input should be a valid string"),
    ],
)
def test_responses_table_errors_name_the_key(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**table)
    assert caught.value.message == error


def test_keepalive_form_on_responses() -> None:
    def route(keepalive: dict[str, Any]) -> dict[str, Any]:
        return {"chat": {"backend": "b", "keepalive": keepalive}}

    assert config().routes[0].settings.keepalive.responses == "comment"
    assert config(routes=route({"responses": "event"})).routes[0].settings.keepalive.responses == (
        "event"
    )
    with pytest.raises(ConfigError) as caught:
        config(routes=route({"responses": "ping"}))
    assert caught.value.message == (
        "routes.chat.keepalive.responses: Input should be 'comment' or 'event'"
    )
