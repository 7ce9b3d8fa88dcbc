"""The official ``anthropic`` Python SDK (pinned), unmodified, against a served gateway's
``/v1/messages``: each error as its SDK class (a bad team key, a forbidden, unknown or
invalid request, a team over its rate limit, no capacity), and an upstream failure
mid-stream as an exception, in front of the fake upstream speaking Messages itself
(passthrough) or chat only (translation)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trio

from gateway.config import build_config
from gateway.service import Gateway
from gateway.teams.keys import hash_key, new_key
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.waiting import wait_until
from tests.conftest import serve_config

from .anthropic_gateway import ASK, MODES, NATIVE, client
from .clients import SDK_ASYNCGEN_WARNINGS
from .scripts import tokens_text

pytestmark = SDK_ASYNCGEN_WARNINGS

ALPHA = new_key()


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads no key from this process's environment."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)


async def serve_with_teams(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path, **limits: Any
) -> tuple[str, Gateway]:
    """A gateway with teams on: ``alpha`` (key ``ALPHA``) may use route ``m`` only, under
    ``limits``; route ``secret-model`` exists for other teams."""
    config = build_config(
        {
            "server": {"bind": "127.0.0.1:0"},
            "backends": {"fake": {"type": "openai", "url": fake.url, **NATIVE}},
            "routes": {
                "chat": {"model": "m", "backend": "fake", "upstream_model": "upstream-m"},
                "secret": {"model": "secret-model", "backend": "fake"},
            },
            "teams": {
                "alpha": {"keys": [hash_key(ALPHA)], "models": ["m"], "limits": limits},
                "beta": {"keys": [hash_key(new_key())]},
            },
            "usage": {"database": str(tmp_path / "usage.sqlite")},
        },
        environ={},
    )

    served = await serve_config(nursery, config)
    return served.url, served.gateway


# --- errors, each as its SDK class ----------------------------------------------------------


async def test_bad_team_key_is_authentication_error_and_both_key_headers_work(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path, no_env_key: None
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path)
    bearer_bad = client(url, api_key=ALPHA + "x")  # this SDK sends api_key as a bearer token
    header_bad = client(url, api_key=None, default_headers={"x-api-key": ALPHA + "x"})
    with trio.fail_after(10):
        for sdk in (bearer_bad, header_bad):
            async with sdk:
                for stream in (False, True):
                    with pytest.raises(anthropic.AuthenticationError) as raised:
                        await sdk.messages.create(**ASK, stream=stream)
                    assert raised.value.status_code == 401
                    assert raised.value.type == "authentication_error"
                    assert raised.value.body["type"] == "error"
                    assert raised.value.request_id
        assert fake.requests == []  # nothing unauthenticated reached the upstream

        async with client(url, api_key=ALPHA) as by_bearer:
            bearer_answer = await by_bearer.messages.create(**ASK, extra_body={"fake": {}})
        async with client(url, api_key=None, default_headers={"x-api-key": ALPHA}) as by_header:
            header_answer = await by_header.messages.create(**ASK, extra_body={"fake": {}})
    assert bearer_answer.content[0].text == header_answer.content[0].text == tokens_text(3)
    assert len(fake.requests) == 2
    for request in fake.requests:  # the team's key stays at the gateway
        assert request.path == "/v1/messages"
        assert not any(ALPHA in value for value in request.headers.values())


async def test_forbidden_unknown_and_invalid_are_their_sdk_classes(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path)
    cases: list[tuple[dict[str, Any], type[anthropic.APIStatusError], int, str]] = [
        (
            {**ASK, "model": "secret-model"},
            anthropic.PermissionDeniedError,
            403,
            "permission_error",
        ),
        ({**ASK, "model": "nope"}, anthropic.NotFoundError, 404, "not_found_error"),
        ({**ASK, "max_tokens": 0}, anthropic.BadRequestError, 400, "invalid_request_error"),
    ]
    async with client(url, api_key=ALPHA) as sdk:
        with trio.fail_after(10):
            for params, error_class, status, error_type in cases:
                for stream in (False, True):
                    with pytest.raises(error_class) as raised:
                        await sdk.messages.create(**params, stream=stream)
                    assert type(raised.value) is error_class
                    assert (raised.value.status_code, raised.value.type) == (status, error_type)
            # The SDK's create() will not send a request without max_tokens; its low-level
            # post() does, and maps the answer as create() would.
            without = {"model": "m", "messages": ASK["messages"]}
            with pytest.raises(anthropic.BadRequestError) as missing:
                await sdk.post("/v1/messages", body=without, cast_to=anthropic.types.Message)
    assert missing.value.type == "invalid_request_error"
    assert "max_tokens" in str(missing.value.api_message)
    assert fake.requests == []


async def test_team_over_its_requests_per_minute_is_rate_limit_error(
    nursery: trio.Nursery, fake: FakeOpenAI, tmp_path: Path
) -> None:
    url, _ = await serve_with_teams(nursery, fake, tmp_path, requests_per_minute=1)
    async with client(url, api_key=ALPHA) as sdk:
        with trio.fail_after(10):
            first = await sdk.messages.with_raw_response.create(**ASK, extra_body={"fake": {}})
            limited = []
            for stream in (False, True):
                with pytest.raises(anthropic.RateLimitError) as raised:
                    await sdk.messages.create(**ASK, stream=stream)
                limited.append(raised.value)
    assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    for error in limited:
        assert (error.status_code, error.type) == (429, "rate_limit_error")
        headers = error.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["anthropic-ratelimit-requests-limit"] == "1"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")  # RFC 3339
        assert not any(name.startswith("x-ratelimit-") for name in headers)
    assert len(fake.requests) == 1


async def test_no_capacity_is_overloaded_error(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway(backend={"admission": {"max_concurrency": 1, "max_queue": 0}})
    async with client(gw.url) as sdk, trio.open_nursery() as holding:
        holding.start_soon(
            partial(sdk.messages.create, **ASK, extra_body={"fake": {"prefill": 30}})
        )
        with trio.fail_after(10):
            await wait_until(lambda: gw.gateway.upstreams["fake"].slots.in_flight == 1)
            refused = []
            for stream in (False, True):
                with pytest.raises(anthropic.OverloadedError) as raised:
                    await sdk.messages.create(**ASK, stream=stream)
                refused.append(raised.value)
        holding.cancel_scope.cancel()
    for error in refused:
        assert (error.status_code, error.type) == (529, "overloaded_error")
        assert "retry-after" in error.response.headers
    assert len(fake.requests) == 1  # only the request holding the slot


# --- failures mid-stream --------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset_mid_stream", "no_done"])
@pytest.mark.parametrize("mode", MODES)
async def test_upstream_failure_mid_stream_raises_in_the_sdk(
    start_gateway, mode: str, fault: str
) -> None:
    """The upstream resets mid-stream, or ends without ``message_stop`` (which the SDK alone
    would take for a whole stream): the gateway's ``event: error`` makes both ways of
    streaming raise instead of returning a clean-looking message."""
    gw = await start_gateway(backend=MODES[mode])
    script = {"tokens": 6, "fault": fault}
    seen: list[str] = []
    async with client(gw.url) as sdk:
        with trio.fail_after(10):
            stream = await sdk.messages.create(**ASK, stream=True, extra_body={"fake": script})
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with stream:
                    async for event in stream:
                        seen.append(event.type)
            with pytest.raises(anthropic.APIStatusError) as helper_raised:
                async with sdk.messages.stream(**ASK, extra_body={"fake": script}) as helper:
                    await helper.get_final_message()
    assert "message_stop" not in seen
    if fault == "reset_mid_stream":
        assert "content_block_delta" in seen
    for error in (raised.value, helper_raised.value):
        assert error.type == "api_error"
        assert error.body["type"] == "error"
