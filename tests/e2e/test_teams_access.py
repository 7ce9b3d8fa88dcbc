"""Teams from the outside: keys, model access and request limits on a real gateway served
on port 0 in front of the fake upstream, and one team's requests kept from harming the
others'. Each test says which issue point it shows."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio
from trio.testing import MockClock

from gateway.teams.keys import fingerprint, hash_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until

from .teams_gateway import (
    ADMIN,
    ALPHA,
    BETA,
    CHAT,
    Start,
    basic,
    bearer,
    start,  # noqa: F401  (fixture)
)

NO_KEY = {
    "error": {
        "message": "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}
BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


# 1. 401/403/429 with OpenAI's bodies and headers; the next valid request succeeds; a
#    team's model list shows only its models.


async def test_401_bodies_and_the_next_valid_request(start: Start, fake: FakeOpenAI) -> None:
    gw = await start()
    async with gw.client() as client:
        for headers, expected in [
            ({}, NO_KEY),
            (bearer(ALPHA + "x"), BAD_KEY),
            (bearer(ADMIN), BAD_KEY),  # the admin key is no team key
            ({"x-api-key": "gw-nope"}, BAD_KEY),
            ({"authorization": "Token " + ALPHA}, NO_KEY),
        ]:
            for method, path, body in [
                ("POST", "/v1/chat/completions", CHAT),
                ("GET", "/v1/models", None),
            ]:
                r = await client.request(method, path, json=body, headers=headers)
                assert r.status_code == 401
                assert r.json() == expected
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.headers["content-type"] == "application/json"
                assert r.headers["x-request-id"]
        assert fake.requests == []  # nothing unauthenticated reached the upstream
        r = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALPHA))
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": BETA})
        assert r.status_code == 200
    assert len(fake.requests) == 2


async def test_403_and_each_team_sees_its_models(start: Start, fake: FakeOpenAI) -> None:
    gw = await start()
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "model": "secret-model"})
        assert r.status_code == 403
        assert r.json() == {
            "error": {
                "message": "Team alpha does not have access to the model `secret-model`.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_allowed",
            }
        }
        assert "www-authenticate" not in r.headers
        models = (await alpha.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["m", "m-alias"]
        assert (await alpha.get("/v1/models/secret-model")).status_code == 404
        assert (await alpha.get("/v1/models/m-alias")).status_code == 200
        all_models = (await beta.get("/v1/models")).json()
        assert [m["id"] for m in all_models["data"]] == ["m", "m-alias", "secret-model"]
        assert fake.requests == []
        r = await alpha.post("/v1/chat/completions", json={**CHAT, "model": "m-alias"})
        assert r.status_code == 200
        r = await beta.post("/v1/chat/completions", json={**CHAT, "model": "secret-model"})
        assert r.status_code == 200
    assert [q.body["model"] for q in fake.requests] == ["upstream-m", "secret-model"]


@pytest.fixture
def clock() -> MockClock:
    """Real time, plus jumps: lets a test move past a 60 s window at once."""
    return MockClock(rate=1.0)


async def test_429_requests_headers_then_window_passes(
    start: Start, fake: FakeOpenAI, clock: MockClock
) -> None:
    gw = await start(requests_per_minute=2)
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        for remaining in ("1", "0"):
            r = await alpha.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "2"
            assert r.headers["x-ratelimit-remaining-requests"] == remaining
            assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
            assert "x-ratelimit-limit-tokens" not in r.headers  # no token limit set
        async with alpha.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 429
            body = json.loads(await r.aread())
        message = body["error"].pop("message")
        assert body == {"error": {"type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        assert message.startswith(
            "Rate limit reached for team alpha on requests per min (RPM): Limit 2. "
            "Please try again in 5"
        )  # 59.9...s
        assert 59 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert r.headers["content-type"] == "application/json"
        # Another team is untouched, and the limited one is back once the window moves.
        assert (await beta.post("/v1/chat/completions", json=CHAT)).status_code == 200
        clock.jump(int(r.headers["retry-after"]))
        r = await alpha.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-requests"] == "1"  # both left the window
    assert len(fake.requests) == 4


async def test_429_concurrent_streams_then_slot_frees(start: Start, fake: FakeOpenAI) -> None:
    gw = await start(concurrent_streams=1)
    async with gw.client(ALPHA) as alpha:
        async with alpha.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "fake": {"prefill": 30}}
        ) as held:
            assert held.status_code == 200  # early headers; the stream sits in prefill
            await wait_until(lambda: fake.requests, within=5)
            r = await alpha.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == {
                "message": "Rate limit reached for team alpha on concurrent streams: Limit 1. "
                "Please try again in 1s.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            r = await alpha.post("/v1/chat/completions", json=CHAT)  # not a stream
            assert r.status_code == 200
        await gw.settled()  # the held stream was cancelled by leaving its block
        async with alpha.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            assert b"data: [DONE]" in await r.aread()


# 2. A key never appears in logs, error bodies or upstream requests.


async def test_one_team_whose_requests_break_the_upstream_cannot_eject_it_for_everyone(
    start: Start,
) -> None:
    gw = await start()
    breaker = gw.gateway.upstreams["fake"].breaker
    breaking = {**CHAT, "fake": {"fault": "reset_before_headers"}}
    async with gw.client(ALPHA) as alpha, gw.client(BETA) as beta:
        for _ in range(10):  # far past the 3 failures that eject
            r = await alpha.post("/v1/chat/completions", json=breaking)
            assert r.status_code == 502
        assert breaker.state(trio.current_time()) == "closed"
        assert (await beta.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # Failures that two teams see are the backend's: those eject.
        await alpha.post("/v1/chat/completions", json=breaking)
        await alpha.post("/v1/chat/completions", json=breaking)
        r = await beta.post("/v1/chat/completions", json={**breaking, "model": "secret-model"})
        assert r.status_code == 502
        assert breaker.state(trio.current_time()) == "open"


async def test_keys_never_reach_logs_bodies_or_upstream(
    start: Start, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start(requests_per_minute=4)
    wrong = ALPHA[:-2] + "zz"
    seen: list[str] = []  # every byte a client got back, headers included

    def keep(r: httpx.Response, body: bytes) -> None:
        seen.append("\n".join(f"{k}: {v}" for k, v in r.headers.items()))
        seen.append(body.decode("utf-8", "replace"))

    async with gw.client() as client:
        for headers, body, status in [
            (bearer(ALPHA), {**CHAT, "stream": True}, 200),
            ({"x-api-key": ALPHA}, CHAT, 200),
            (bearer(ALPHA), {**CHAT, "model": "secret-model"}, 403),
            (bearer(wrong), CHAT, 401),
            (basic(ALPHA), CHAT, 200),
            (bearer(ALPHA), {**CHAT, "stream": True, "fake": {"fault": "reset_mid_stream"}}, 200),
            (bearer(ALPHA), CHAT, 429),
            (bearer(ALPHA), {**CHAT, "model": "nope"}, 404),
        ]:
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers={**headers, "x-request-id": "leak-test"},
            ) as r:
                keep(r, await r.aread())
                assert r.status_code == status, (headers, body)
        r = await client.get("/v1/models", headers=bearer(ALPHA))
        keep(r, r.content)
        await gw.settled()

    upstream = [json.dumps(q.headers) + json.dumps(q.body) for q in fake.requests]
    assert len(upstream) == 4
    assert not any("authorization" in q.headers for q in fake.requests)
    logs = [record.getMessage() for record in caplog.records]
    logs += [caplog.text]
    for key in (ALPHA, wrong):
        for name, texts in (("logs", logs), ("responses", seen), ("upstream", upstream)):
            assert not any(key in text for text in texts), f"key found in {name}"
            assert not any(key[3:20] in text for text in texts), f"part of a key in {name}"
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    by_status = [
        (a["status"], a.get("team"), a.get("key_id"))
        for a in access
        if a.get("path", "/v1/chat/completions") == "/v1/chat/completions" or "backend" in a
    ]
    fp = fingerprint(hash_key(ALPHA))
    assert by_status == [
        (200, "alpha", fp),
        (200, "alpha", fp),
        (403, "alpha", fp),
        (401, None, None),
        (200, "alpha", fp),
        (200, "alpha", fp),
        (429, "alpha", fp),
        (404, "alpha", fp),
    ]
