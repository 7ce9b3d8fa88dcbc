"""Compare the fake vLLM with a real ``vllm serve``: the same requests to both, and every
difference in what the gateway relies on — status codes, content types, the shape of JSON
bodies and SSE chunks (keys and value types, not values), the end of streams, and the
``vllm:*`` metric families the fake exports, with their labels.

Run it where a GPU serves a small model (the fake copies its model name, ``max_model_len``
and API key)::

    python -m tests.fakes.vllm_diff http://127.0.0.1:8000 [--api-key KEY]

It prints one line per difference and exits 1 if there is any. Metric families only the real
server exports are listed as information: the fake models a subset on purpose.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.sse import SSEFramer

from .vllm import FakeVLLM

__all__ = ["Difference", "Probe", "compare", "main", "probes"]


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    method: str
    path: str
    body: Mapping[str, Any] | None = None
    auth: bool = True


@dataclass(frozen=True, slots=True)
class Difference:
    probe: str
    where: str
    real: str
    fake: str

    def __str__(self) -> str:
        return f"{self.probe}: {self.where}: real {self.real} | fake {self.fake}"


@dataclass
class Observed:
    """What one server answered to one probe, reduced to what is compared."""

    status: int
    content_type: str
    facts: dict[str, str] = field(default_factory=dict)  # where -> shape or value


def probes(model: str) -> list[Probe]:
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
    }
    text = {"model": model, "prompt": "Hello, my name is", "max_tokens": 4}
    usage = {"stream": True, "stream_options": {"include_usage": True}}
    continuous = {
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    return [
        Probe("health", "GET", "/health"),
        Probe("models", "GET", "/v1/models"),
        Probe("models-without-key", "GET", "/v1/models", auth=False),
        Probe("unknown-path", "GET", "/v1/no-such-path"),
        Probe("wrong-method", "GET", "/v1/chat/completions"),
        Probe("chat", "POST", "/v1/chat/completions", chat),
        Probe("chat-stream", "POST", "/v1/chat/completions", {**chat, "stream": True}),
        Probe("chat-stream-usage", "POST", "/v1/chat/completions", {**chat, **usage}),
        Probe("chat-stream-continuous", "POST", "/v1/chat/completions", {**chat, **continuous}),
        Probe("completions", "POST", "/v1/completions", text),
        Probe("completions-stream-usage", "POST", "/v1/completions", {**text, **usage}),
        Probe("unknown-model", "POST", "/v1/chat/completions", {**chat, "model": "no-such"}),
        Probe(
            "max-tokens-too-large",
            "POST",
            "/v1/chat/completions",
            {**chat, "max_tokens": 10_000_000},
        ),
        Probe(
            "stream-options-without-stream",
            "POST",
            "/v1/chat/completions",
            {**chat, "stream_options": {"include_usage": True}},
        ),
        Probe("missing-messages", "POST", "/v1/chat/completions", {"model": model}),
        Probe("metrics", "GET", "/metrics"),
    ]


def shape(value: Any) -> Any:
    """Keys and value types of a JSON document; a list is described by its first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "null" if value is None else type(value).__name__


def _flatten(prefix: str, tree: Any) -> Iterator[tuple[str, str]]:
    if isinstance(tree, dict):
        if not tree:
            yield prefix, "{}"
        for key, sub in tree.items():
            yield from _flatten(f"{prefix}.{key}", sub)
    elif isinstance(tree, list):
        if not tree:
            yield prefix, "[]"
        for sub in tree:
            yield from _flatten(prefix + "[]", sub)
    else:
        yield prefix, str(tree)


def observe(response: httpx.Response, probe: Probe) -> Observed:
    seen = Observed(response.status_code, response.headers.get("content-type", "(none)"))
    if probe.path == "/metrics" and response.status_code == 200:
        for family in text_string_to_metric_families(response.text):
            if family.name.startswith("vllm:"):
                labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
                seen.facts[f"metric {family.name}"] = f"{family.type} {','.join(labels)}"
        return seen
    if seen.content_type.startswith("text/event-stream"):
        events = [e for e in SSEFramer().feed(response.content) if e.is_data]
        seen.facts["ends with [DONE]"] = str(bool(events) and events[-1].is_done)
        chunks = [json.loads(e.data) for e in events if e.data and not e.is_done]
        picks = {"first chunk": chunks[:1], "second chunk": chunks[1:2], "last chunk": chunks[-1:]}
        for name, picked in picks.items():
            for where, kind in _flatten(name, shape(picked[0]) if picked else "absent"):
                seen.facts[where] = kind
        return seen
    try:
        doc = response.json() if response.content else "(empty body)"
    except ValueError:
        doc = "(not JSON)"
    seen.facts.update(_flatten("body", shape(doc)))
    return seen


async def _ask(client: httpx.AsyncClient, probe: Probe, key: str | None) -> Observed:
    headers = {"authorization": f"Bearer {key}"} if key and probe.auth else {}
    response = await client.request(probe.method, probe.path, json=probe.body, headers=headers)
    return observe(response, probe)


def _differences(probe: Probe, real: Observed, fake: Observed) -> Iterator[Difference]:
    if real.status != fake.status:
        yield Difference(probe.name, "status", str(real.status), str(fake.status))
    if real.content_type != fake.content_type:
        yield Difference(probe.name, "content-type", real.content_type, fake.content_type)
    for where in sorted(real.facts.keys() | fake.facts.keys()):
        a, b = real.facts.get(where, "(absent)"), fake.facts.get(where, "(absent)")
        if a == b or (where.startswith("metric ") and b == "(absent)"):
            continue  # the fake exports a subset of vLLM's metrics on purpose
        yield Difference(probe.name, where, a, b)


async def compare(
    real_url: str, fake: FakeVLLM, *, api_key: str | None = None
) -> tuple[list[Difference], list[str]]:
    """Differences between the server at ``real_url`` and ``fake`` (serving), and the
    ``vllm:*`` metric families only the real server exports."""
    differences: list[Difference] = []
    real_only: list[str] = []
    async with (
        httpx.AsyncClient(base_url=real_url, timeout=120) as real_client,
        httpx.AsyncClient(base_url=fake.url, timeout=120) as fake_client,
    ):
        for probe in probes(fake.served_model_name):
            real = await _ask(real_client, probe, api_key)
            mine = await _ask(fake_client, probe, api_key)
            differences += _differences(probe, real, mine)
            real_only += sorted(
                k for k in real.facts.keys() - mine.facts.keys() if k.startswith("metric ")
            )
    return differences, real_only


async def _main(url: str, api_key: str | None) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        card = (await client.get("/v1/models", headers=headers)).json()["data"][0]
    fake = FakeVLLM(
        served_model_name=card["id"],
        model_path=card.get("root") or card["id"],
        max_model_len=card.get("max_model_len") or 2048,
        api_key=api_key,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        differences, real_only = await compare(url, fake, api_key=api_key)
        nursery.cancel_scope.cancel()
    for name in real_only:
        print(f"info: only the real server exports {name.removeprefix('metric ')}")
    for difference in differences:
        print(difference)
    print(f"{len(differences)} difference(s)")
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="root URL of a running vllm serve")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    return trio.run(_main, args.url.rstrip("/").removesuffix("/v1"), args.api_key)


if __name__ == "__main__":
    sys.exit(main())
