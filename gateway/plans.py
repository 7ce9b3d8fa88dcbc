"""What each target of a route is sent, and how its answer reaches the client.

A request in the backend's own dialect goes as it is and its answer comes back unchanged.
Anthropic ``messages`` and OpenAI ``responses`` to a backend that speaks only chat go
translated to ``chat/completions`` and the answer is translated back; their token counts
(``messages/count_tokens``, ``responses/input_tokens``) to such a backend become a call of
its :meth:`~gateway.abc.Backend.count_tokens`. Which it is, is decided per target: one route
may mix backends that speak a dialect and backends that do not, and a failover between them
is invisible to the client. A Responses request that continues a stored one reaches a
native backend with the whole conversation as its ``input``: no backend keeps it.

No trio here: the plan is data, and the one answer the gateway makes itself (a count) is a
plain async context manager.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace

from .abc import Backend, Endpoint, JSONObject, UpstreamRequest, UpstreamResponse, json_bytes
from .config import TargetSettings
from .dialects.anthropic_request import messages_to_chat
from .dialects.base import Shape, Unchanged
from .dialects.chat import ChatPassthrough
from .dialects.messages import MessagesFromChat, MessagesPassthrough
from .dialects.responses import ResponsesFromChat, ResponsesPassthrough
from .dialects.responses_request import input_items, responses_to_chat
from .routing import upstream_body

__all__ = ["Plan", "Planned", "plan_request"]

# Client headers a backend that speaks Messages itself is sent on (the rest never go).
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")

Opener = Callable[[UpstreamRequest], AbstractAsyncContextManager[UpstreamResponse]]


@dataclass(frozen=True, slots=True)
class Planned:
    """One target's request, the shape of its answer, (for a count made by the gateway)
    what stands in for the backend's ``open_response``, and whether it takes a backend
    slot (counts do not: they generate nothing)."""

    request: UpstreamRequest
    shape: Shape
    open: Opener | None = None
    admitted: bool = True


@dataclass(frozen=True, slots=True)
class Plan:
    """One client request, ready to be sent to any target of its route.

    ``native_headers`` go to targets that speak ``endpoint`` (for Messages, the client's
    ``anthropic-version`` and ``anthropic-beta`` besides ``headers``); ``chat_body`` and
    ``translated`` are set when some target speaks only chat."""

    endpoint: Endpoint
    body: JSONObject
    stream: bool
    request_id: str
    headers: Mapping[str, str]
    native_headers: Mapping[str, str]
    passthrough: Shape
    chat_body: JSONObject | None = None
    translated: Shape | None = None

    def for_target(self, backend: Backend, target: TargetSettings) -> Planned:
        counting = self.endpoint in ("messages/count_tokens", "responses/input_tokens")
        if self.chat_body is None or self.translated is None or backend.speaks(self.endpoint):
            request = self._request(self.endpoint, self.body, target, self.native_headers)
            return Planned(request, self.passthrough, admitted=not counting)
        request = self._request("chat/completions", self.chat_body, target, self.headers)
        if counting:
            counter = _counter(backend, self.endpoint)
            return Planned(request, self.translated, counter, admitted=False)
        return Planned(request, self.translated)

    def _request(
        self,
        endpoint: Endpoint,
        body: JSONObject,
        target: TargetSettings,
        headers: Mapping[str, str],
    ) -> UpstreamRequest:
        return UpstreamRequest(
            endpoint=endpoint,
            body=upstream_body(body, target),
            stream=self.stream,
            request_id=self.request_id,
            headers=headers,
        )


def plan_request(
    endpoint: Endpoint,
    body: JSONObject,
    backends: Sequence[Backend],
    *,
    model: str,
    stream: bool,
    request_id: str,
    headers: Mapping[str, str],
    client_headers: Mapping[str, str],
    hide_usage: bool = False,
    history: Sequence[JSONObject] = (),
    keepalive_events: bool = False,
) -> Plan:
    """The plan of one request whose route's targets are ``backends``. Raises
    :class:`~gateway.errors.InvalidRequest` for a Messages or Responses request that some
    target would need translated and translation cannot carry — before anything is sent.

    Responses: ``history`` holds the items of the turns before this one
    (``previous_response_id`` expanded by the gateway, since no backend keeps them);
    ``keepalive_events`` is the route's choice of heartbeat."""
    if endpoint in ("responses", "responses/input_tokens"):
        return _plan_responses(
            endpoint,
            body,
            backends,
            model=model,
            stream=stream,
            request_id=request_id,
            headers=headers,
            history=history,
            keepalive_events=keepalive_events,
        )
    if endpoint not in ("messages", "messages/count_tokens"):
        return Plan(
            endpoint, body, stream, request_id, headers, headers, ChatPassthrough(hide_usage)
        )
    native_headers = {
        **headers,
        **{name: client_headers[name] for name in ANTHROPIC_HEADERS if name in client_headers},
    }
    counting = endpoint == "messages/count_tokens"
    passthrough: Shape = Unchanged() if counting else MessagesPassthrough()
    plan = Plan(endpoint, body, stream, request_id, headers, native_headers, passthrough)
    if all(backend.speaks(endpoint) for backend in backends):
        return plan
    if counting:
        # A count of what the backend's chat template makes of the messages and tools.
        chat_body = messages_to_chat({**body, "max_tokens": 1})
        return replace(plan, chat_body=chat_body, translated=Unchanged())
    stops = body.get("stop_sequences")
    translated = MessagesFromChat(
        "msg_" + uuid.uuid4().hex[:24],
        model,
        [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else (),
    )
    return replace(plan, chat_body=messages_to_chat(body), translated=translated)


def _plan_responses(
    endpoint: Endpoint,
    body: JSONObject,
    backends: Sequence[Backend],
    *,
    model: str,
    stream: bool,
    request_id: str,
    headers: Mapping[str, str],
    history: Sequence[JSONObject],
    keepalive_events: bool,
) -> Plan:
    # A native backend gets the whole conversation as items: it keeps nothing itself.
    native_body = {k: v for k, v in body.items() if k != "previous_response_id"}
    if history:
        native_body["input"] = [*history, *input_items(body)]
    counting = endpoint == "responses/input_tokens"
    passthrough: Shape = Unchanged() if counting else ResponsesPassthrough(keepalive_events)
    plan = Plan(endpoint, native_body, stream, request_id, headers, headers, passthrough)
    if all(backend.speaks(endpoint) for backend in backends):
        return plan
    if counting:
        chat_body = responses_to_chat(body, history)
        return replace(plan, chat_body=chat_body, translated=Unchanged())
    translated = ResponsesFromChat(
        response_id="resp_" + uuid.uuid4().hex,
        model=model,
        request=body,
        created_at=int(time.time()),  # (the request's custom tools it reads itself)
        keepalive_events=keepalive_events,
    )
    return replace(plan, chat_body=responses_to_chat(body, history), translated=translated)


def _counter(backend: Backend, endpoint: Endpoint) -> Opener:
    """An ``open_response`` stand-in that answers the count ``endpoint`` answers
    (Anthropic's ``{"input_tokens": n}``, or Responses' with its ``object``) from the
    backend's own count."""

    @asynccontextmanager
    async def open_count(request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        count = await backend.count_tokens(request)
        answer: JSONObject = {"input_tokens": count}
        if endpoint == "responses/input_tokens":
            answer = {"object": "response.input_tokens", "input_tokens": count}
        yield UpstreamResponse(200, "application/json", _once(json_bytes(answer)))

    return open_count


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
