"""Teams, the sans-I/O parts: keys, limit windows and headers, the config tables, the RESP
parser, usage storage and ``--since``. Timing runs on trio's MockClock."""

from __future__ import annotations

import base64
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from gateway.config import build_config
from gateway.errors import ConfigError, RateLimited, error_body
from gateway.teams.circuit import Circuit
from gateway.teams.keys import (
    KeyRing,
    credential_from_headers,
    fingerprint,
    hash_key,
    is_hash,
    new_key,
)
from gateway.teams.limits import (
    Limits,
    LocalWindows,
    WindowUsage,
    decide,
    format_duration,
    wait_below,
)
from gateway.teams.resp import (
    RedisError,
    RedisUnavailable,
    ReplyParser,
    encode_command,
    parse_redis_url,
)
from gateway.teams.service import Identity, Teams
from gateway.teams.state import LocalState
from gateway.teams.usage import (
    UsageDatabaseError,
    UsageRecord,
    UsageStore,
    check_usage_database,
    parse_since,
)

# --- keys -------------------------------------------------------------------------------


def test_new_keys_are_random_and_hash_to_config_form() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert re.fullmatch(r"gw-[A-Za-z0-9_\-]{43}", key)
    digest = hash_key(key)
    assert is_hash(digest) and key not in digest
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert fingerprint(digest) == digest[7:19]


def test_keyring_finds_owner_and_rejects_near_misses() -> None:
    a, b = new_key(), new_key()
    ring = KeyRing([(hash_key(a), "alpha"), (hash_key(b), "beta")])
    assert ring.owner(a) == ("alpha", fingerprint(hash_key(a)))
    assert ring.owner(b) == ("beta", fingerprint(hash_key(b)))
    for wrong in (a[:-1], a + "x", a.upper(), "", " " + a, hash_key(a)):
        assert ring.owner(wrong) is None


def test_keyring_compares_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: a match on the first entry still compares against all the others."""
    import hmac

    keys = [new_key() for _ in range(5)]
    ring = KeyRing([(hash_key(k), f"t{i}") for i, k in enumerate(keys)])
    calls = 0
    real = hmac.compare_digest

    def counting(x: Any, y: Any) -> bool:
        nonlocal calls
        calls += 1
        return real(x, y)

    monkeypatch.setattr("gateway.teams.keys.hmac.compare_digest", counting)
    for key in (keys[0], keys[4], "unknown"):
        calls = 0
        ring.owner(key)
        assert calls == 5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer k1"}, ("k1", "bearer")),
        ({"authorization": "bearer   k1  "}, ("k1", "bearer")),
        ({"x-api-key": "k2"}, ("k2", "x-api-key")),
        ({"authorization": "Bearer k1", "x-api-key": "k2"}, ("k1", "bearer")),
        ({"authorization": "Basic " + base64.b64encode(b"admin:k3").decode()}, ("k3", "basic")),
        ({"authorization": "Basic " + base64.b64encode(b":k3").decode()}, ("k3", "basic")),
        ({"authorization": "Basic " + base64.b64encode(b"nopass").decode()}, None),
        ({"authorization": "Basic !!!"}, None),
        ({"authorization": "Bearer"}, None),
        ({"authorization": "Token k1"}, None),
        ({}, None),
    ],
)
def test_credentials_from_headers(headers: dict[str, str], expected: Any) -> None:
    credential = credential_from_headers(headers)
    if expected is None:
        assert credential is None
    else:
        assert credential is not None and (credential.key, credential.scheme) == expected
        assert expected[0] not in repr(credential)


# --- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.9995, "1000ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
    ],
)
def test_format_duration_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_wait_below() -> None:
    entries = [(10.0, 4), (20.0, 4), (30.0, 4)]  # 12 in the window at t=40
    assert wait_below(entries, 13, 40.0) == 0.0
    assert wait_below(entries, 12, 40.0) == 30.0  # once the first leaves (t=70): 8 < 12
    assert wait_below(entries, 5, 40.0) == 40.0  # two must leave (t=80): 4 < 5
    assert wait_below(entries, 1, 40.0) == 50.0  # all of them


def test_decide_headers_and_order_of_limits() -> None:
    limits = Limits(requests_per_minute=3, tokens_per_minute=100, concurrent_streams=1)
    ok = decide(limits, WindowUsage(requests=1, tokens=40, tokens_reset=12.5), stream=False)
    assert ok.allowed
    assert ok.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "60",
        "x-ratelimit-reset-tokens": "12.5s",
    }
    full = WindowUsage(
        requests=3, requests_reset=50, requests_wait=20, tokens=100, tokens_wait=7, streams=1
    )
    assert decide(limits, full, stream=True).exceeded == "concurrent_streams"
    no = decide(limits, full, stream=False)
    assert (no.exceeded, no.retry_after) == ("requests", 20)
    assert no.headers["x-ratelimit-remaining-requests"] == "0"
    assert no.headers["x-ratelimit-reset-requests"] == "50s"
    tokens = decide(limits, WindowUsage(requests=0, tokens=150, tokens_wait=7), stream=False)
    assert (tokens.exceeded, tokens.retry_after) == ("tokens", 7)
    assert tokens.headers["x-ratelimit-remaining-tokens"] == "0"
    assert decide(Limits(), full, stream=True).headers == {}


async def test_sliding_window_on_mock_clock(autojump_clock: MockClock) -> None:
    windows = LocalWindows()
    limits = Limits(requests_per_minute=2)
    start = trio.current_time()
    assert windows.admit("a", limits, trio.current_time(), stream=False).allowed
    await trio.sleep(30)
    assert windows.admit("a", limits, trio.current_time(), stream=False).allowed
    refused = windows.admit("a", limits, trio.current_time(), stream=False)
    assert refused.exceeded == "requests" and refused.retry_after == pytest.approx(30)
    assert windows.admit("b", limits, trio.current_time(), stream=False).allowed  # per team
    await trio.sleep(refused.retry_after)
    assert trio.current_time() - start == pytest.approx(60)
    assert windows.admit("a", limits, trio.current_time(), stream=False).allowed
    assert not windows.admit("a", limits, trio.current_time(), stream=False).allowed


async def test_token_window_counts_finished_usage(autojump_clock: MockClock) -> None:
    state = LocalState()
    limits = Limits(tokens_per_minute=100)
    decision, ticket = await state.admit("a", limits, id="1", stream=False)
    assert ticket is not None and decision.headers["x-ratelimit-remaining-tokens"] == "100"
    await trio.sleep(10)
    ticket.release(70)
    ticket.release(70)  # idempotent
    decision, ticket = await state.admit("a", limits, id="2", stream=False)
    assert ticket is not None and decision.headers["x-ratelimit-remaining-tokens"] == "30"
    await trio.sleep(10)
    ticket.release(45)  # over the limit now: 115
    decision, none = await state.admit("a", limits, id="3", stream=False)
    assert none is None and decision.exceeded == "tokens"
    assert decision.retry_after == pytest.approx(50)  # the 70 leave at t=70; 45 < 100
    await trio.sleep(decision.retry_after)
    _, ticket = await state.admit("a", limits, id="4", stream=False)
    assert ticket is not None


async def test_concurrent_streams_are_released(autojump_clock: MockClock) -> None:
    state = LocalState()
    limits = Limits(concurrent_streams=1)
    _, first = await state.admit("a", limits, id="1", stream=True)
    assert first is not None
    decision, none = await state.admit("a", limits, id="2", stream=True)
    assert none is None and decision.exceeded == "concurrent_streams"
    _, unary = await state.admit("a", limits, id="3", stream=False)
    assert unary is not None  # the limit is on streams only
    first.release(0)
    _, again = await state.admit("a", limits, id="4", stream=True)
    assert again is not None


def test_rate_limited_error_shape() -> None:
    error = RateLimited(
        "Rate limit reached",
        kind="tokens",
        retry_after=2.2,
        limit_headers={"x-ratelimit-limit-tokens": "10"},
    )
    assert error.status == 429
    assert error_body(error) == {
        "error": {
            "message": "Rate limit reached",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error.headers() == {"x-ratelimit-limit-tokens": "10", "Retry-After": "3"}


# --- config -----------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "backends": {"b": {"type": "openai", "url": "http://x/v1"}},
    "routes": {"chat": {"backend": "b", "aliases": ["c"]}, "embed": {"backend": "b"}},
}


def test_config_keeps_hashes_and_hashes_env_keys() -> None:
    key = new_key()
    config = build_config(
        {
            **BASE,
            "teams": {"alpha": {"keys": [hash_key("x"), {"env": "ALPHA_KEY"}], "models": ["c"]}},
            "auth": {"admin_keys": [{"env": "ADMIN"}]},
        },
        environ={"ALPHA_KEY": key, "ADMIN": hash_key("adm")},
    )
    assert config.teams["alpha"].keys == (hash_key("x"), hash_key(key))
    assert config.auth.admin_keys == (hash_key("adm"),)
    teams = Teams(config)
    assert teams.enabled
    assert teams.authenticate({"authorization": f"Bearer {key}"}) == Identity(
        "alpha", fingerprint(hash_key(key))
    )
    route = {r.name: r for r in config.routes}
    assert teams.may_use("alpha", route["chat"]) and not teams.may_use("alpha", route["embed"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"teams": {"a": {"keys": ["plain-key"]}}},
            "teams.a.keys.0: a key in the config must be its hash",
        ),
        ({"auth": {"admin_keys": ["sha256:abc"]}}, "auth.admin_keys.0: a key in the config"),
        (
            {"teams": {"a": {"keys": [hash_key("k")], "models": ["nope"]}}},
            "teams.a.models.0: 'nope' is no route or model name",
        ),
        ({"teams": {"a b": {"keys": [hash_key("k")]}}}, "teams.a b: a team name"),
        ({"teams": {"a": {"keys": []}}}, "teams.a.keys: Tuple should have at least 1 item"),
        (
            {"teams": {"a": {"keys": [hash_key("k")], "limits": {"requests_per_minute": 0}}}},
            "teams.a.limits.requests_per_minute: Input should be greater than 0",
        ),
        ({"teams": {"a": {"keys": [hash_key("k")], "limit": {}}}}, "teams.a.limit: unknown key"),
        ({"state": {"redis": "http://x"}}, "state.redis: Value error"),
        (
            {"teams": {"a": {"keys": [{"env": "UNSET_KEY_VAR"}]}}},
            "teams.a.keys.0: environment variable UNSET_KEY_VAR is not set",
        ),
    ],
)
def test_config_errors_name_the_path(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, **extra}, environ={})
    assert message in caught.value.message
    assert "plain-key" not in caught.value.message


def test_auth_off_without_teams_or_when_disabled() -> None:
    assert not Teams(build_config(BASE, environ={})).enabled
    config = build_config(
        {**BASE, "auth": {"enabled": False}, "teams": {"a": {"keys": [hash_key("k")]}}}, environ={}
    )
    assert not Teams(config).enabled


# --- RESP ---------------------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command("SET", "k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"


def test_reply_parser_at_every_split_point() -> None:
    wire = (
        b"+OK\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n*3\r\n$1\r\na\r\n:-7\r\n*0\r\n"
        b"-NOSCRIPT No matching script\r\n*-1\r\n"
    )
    expected: list[Any] = [b"OK", 42, b"he\r\no", None, [b"a", -7, []], "NOSCRIPT", None]
    for split in range(len(wire) + 1):
        parser = ReplyParser()
        got: list[Any] = []
        for piece in (wire[:split], wire[split:]):
            parser.feed(piece)
            while True:
                reply = parser.next_reply()
                if isinstance(reply, type):
                    break
                got.append(str(reply).split()[0] if isinstance(reply, RedisError) else reply)
        assert got == expected, split


def test_reply_parser_refuses_what_is_not_resp() -> None:
    for wire in (b"?what\r\n", b"$x\r\n", b":1.5\r\n", b"*z\r\n"):
        parser = ReplyParser()
        parser.feed(wire)
        with pytest.raises(RedisUnavailable, match="protocol error"):
            parser.next_reply()


def test_redis_url() -> None:
    a = parse_redis_url("redis://:s%40cret@h:6380/2")
    assert (a.host, a.port, a.db, a.password, a.username) == ("h", 6380, 2, "s@cret", None)
    assert parse_redis_url("redis://localhost").port == 6379
    for bad in ("http://h", "redis://", "redis://h/x"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


# --- usage --------------------------------------------------------------------------------


def test_parse_since() -> None:
    assert parse_since("30m", now=10_000) == 8_200
    assert parse_since("2h", now=10_000) == 2_800
    assert parse_since("1d", now=100_000) == 13_600
    assert parse_since("1970-01-01T01:00", now=0) == 3600
    assert parse_since("1970-01-01T01:00+01:00", now=0) == 0
    with pytest.raises(ValueError, match="30m, 2h, 7d"):
        parse_since("yesterday", now=0)
    for too_far in ("99999999999999999999h", "9" * 400 + "d", "2h"):
        with pytest.raises(ValueError, match="before 1970"):
            parse_since(too_far, now=3600)


def test_usage_store_sums_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    store = UsageStore(path)

    def rec(at: float, team: str, **kw: Any) -> UsageRecord:
        fields: dict[str, Any] = {
            "route": "chat",
            "backend": "b",
            "error": False,
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "stream_seconds": 0.0,
        }
        return UsageRecord(at=at, team=team, **{**fields, **kw})

    store.add(
        [
            rec(600, "a"),
            rec(610, "a", error=True, stream_seconds=1.5),
            rec(7200, "a", completion_tokens=10),
            rec(700, "b", backend="c"),
        ]
    )
    store.close()
    store = UsageStore(path)
    rows = {(r.team, r.backend): r for r in store.query()}
    a = rows[("a", "b")]
    assert (
        a.requests,
        a.errors,
        a.prompt_tokens,
        a.completion_tokens,
        a.total_tokens,
        a.stream_seconds,
    ) == (3, 1, 15, 16, 31, 1.5)
    assert [(r.team, r.requests) for r in store.query(team="b")] == [("b", 1)]
    assert [(r.team, r.requests) for r in store.query(since=7200)] == [("a", 1)]
    assert [(r.team, r.requests) for r in store.query(since=660)] == [("a", 1), ("b", 1)]
    store.close()


def test_usage_database_check_names_the_path_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    for path, why in [
        (tmp_path / "missing" / "u.sqlite", f"directory {tmp_path / 'missing'} does not exist"),
        (tmp_path, "it is a directory"),
        (tmp_path / "file" / "u.sqlite", f"{tmp_path / 'file'} is not a directory"),
        (tmp_path / "junk.sqlite", "file is not a database"),
    ]:
        with pytest.raises(UsageDatabaseError) as caught:
            check_usage_database(path)
        assert str(caught.value) == f"usage.database {path}: cannot open it: {why}"
    if Path("/proc/self").is_dir():  # not even root may create files here
        with pytest.raises(UsageDatabaseError, match=r"^usage.database /proc/u.sqlite: cannot"):
            check_usage_database("/proc/u.sqlite")
    before = sorted(p.name for p in tmp_path.iterdir())
    check_usage_database(tmp_path / "new.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind
    UsageStore(tmp_path / "new.sqlite").close()
    check_usage_database(tmp_path / "new.sqlite")


def test_usage_store_open_error_is_one_line_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "u.sqlite"
    with pytest.raises(UsageDatabaseError) as caught:
        UsageStore(path)
    assert str(caught.value) == (
        f"usage.database {path}: cannot open it: directory {path.parent} does not exist"
    )


def test_usage_store_maps_no_file(tmp_path: Path) -> None:
    """WAL's -shm index is always memory-mapped, and a mapped file that someone truncates
    kills the process with SIGBUS: the store takes an older WAL file back to a rollback
    journal and maps nothing."""
    path = tmp_path / "usage.sqlite"
    old = sqlite3.connect(path)
    assert old.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    old.execute("CREATE TABLE other (x)")
    old.close()
    store = UsageStore(path)
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert store._db.execute("PRAGMA mmap_size").fetchone() == (0,)
    store.add([UsageRecord(600, "a", "chat", "b", False, 1, 2, 0.0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage.sqlite"]  # no -shm, -wal
    store.close()


# --- the Redis circuit ----------------------------------------------------------------------


def test_circuit_needs_failures_in_a_row() -> None:
    c = Circuit(threshold=3, cooldown=5)
    assert c.try_call(0) is False
    assert c.failed(0, False)  # began a run
    assert not c.failed(0, False)
    assert c.succeeded(False)  # ended it
    assert not c.succeeded(False)
    c.failed(1, False)
    c.failed(1, False)
    assert c.state(1) == "closed" and c.try_call(1) is False


def test_circuit_skips_then_lets_one_probe_through() -> None:
    c = Circuit(threshold=3, cooldown=5)
    for _ in range(3):
        c.failed(10, False)
    assert c.state(10) == "open"
    assert [c.try_call(t) for t in (10, 12, 14.9)] == [None, None, None]
    assert c.skipped == 3
    c.failed(13, False)  # a call already in flight when it opened: the probe is not put off
    assert c.state(15) == "half_open"
    assert c.try_call(15) is True  # the probe
    assert c.try_call(15) is None  # the rest wait for its verdict
    assert c.state(100) == "open"  # however long it takes
    c.failed(17, True)  # the probe failed: another cooldown from now
    assert c.try_call(21.9) is None and c.state(22) == "half_open"
    assert c.try_call(22) is True
    c.abandoned(True)  # the probe's client went away: no verdict, the next call probes
    assert c.try_call(22) is True
    assert c.succeeded(True)
    assert c.state(22) == "closed" and c.try_call(22) is False and c.skipped == 5


def test_circuit_arguments() -> None:
    for bad in ({"threshold": 0}, {"cooldown": -1}):
        with pytest.raises(ValueError):
            Circuit(**bad)
