import json

from gateway.testing.fake_openai import FakeOpenAI, chat_events


async def test_stream_relayed_byte_exact(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                "fake": {"tokens": 5}}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            data = b"".join([c async for c in resp.aiter_raw()])
    assert data == b"".join(chat_events(5, model="upstream-m"))
    assert fake.requests[-1].body["model"] == "upstream-m"


async def test_non_stream(start_gateway, fake: FakeOpenAI) -> None:
    gw = await start_gateway()
    async with gw.client() as client:
        resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert resp.headers["x-request-id"]
