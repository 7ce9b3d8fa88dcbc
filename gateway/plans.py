"""What each target of a route is sent, and how its answer reaches the client.

A request in the backend's own dialect goes as it is and its answer comes back unchanged.
Anthropic ``messages`` to a backend that speaks only chat goes translated to
``chat/completions`` and its answer is translated back; ``messages/count_tokens`` to such a
backend becomes a call of its :meth:`~gateway.abc.Backend.count_tokens`. Which it is, is
decided per target: one route may mix backends that speak Messages and backends that do not,
and a failover between them is invisible to the client.

No trio here: the plan is data, and the one answer the gateway makes itself (a count) is a
plain async context manager.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace

from .abc import Backend, Endpoint, JSONObject, UpstreamRequest, UpstreamResponse, json_bytes
from .config import TargetSettings
from .dialects.anthropic_request import messages_to_chat
from .dialects.base import Shape
from .dialects.chat import ChatPassthrough
from .dialects.messages import MessagesFromChat, MessagesPassthrough
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
        counting = self.endpoint == "messages/count_tokens"
        if self.chat_body is None or self.translated is None or backend.speaks(self.endpoint):
            request = self._request(self.endpoint, self.body, target, self.native_headers)
            return Planned(request, self.passthrough, admitted=not counting)
        request = self._request("chat/completions", self.chat_body, target, self.headers)
        if counting:
            return Planned(request, self.translated, _counter(backend), admitted=False)
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
) -> Plan:
    """The plan of one request whose route's targets are ``backends``. Raises
    :class:`~gateway.errors.InvalidRequest` for a Messages request that some target would
    need translated and translation cannot carry — before anything is sent."""
    if endpoint not in ("messages", "messages/count_tokens"):
        return Plan(
            endpoint, body, stream, request_id, headers, headers, ChatPassthrough(hide_usage)
        )
    native_headers = {
        **headers,
        **{name: client_headers[name] for name in ANTHROPIC_HEADERS if name in client_headers},
    }
    plan = Plan(endpoint, body, stream, request_id, headers, native_headers, MessagesPassthrough())
    if all(backend.speaks(endpoint) for backend in backends):
        return plan
    if endpoint == "messages/count_tokens":
        # A count of what the backend's chat template makes of the messages and tools.
        chat_body = messages_to_chat({**body, "max_tokens": 1})
        return replace(plan, chat_body=chat_body, translated=MessagesPassthrough())
    stops = body.get("stop_sequences")
    translated = MessagesFromChat(
        "msg_" + uuid.uuid4().hex[:24],
        model,
        [s for s in stops if isinstance(s, str)] if isinstance(stops, list) else (),
    )
    return replace(plan, chat_body=messages_to_chat(body), translated=translated)


def _counter(backend: Backend) -> Opener:
    """An ``open_response`` stand-in that answers ``{"input_tokens": n}`` from the
    backend's own count."""

    @asynccontextmanager
    async def open_count(request: UpstreamRequest) -> AsyncIterator[UpstreamResponse]:
        count = await backend.count_tokens(request)
        yield UpstreamResponse(200, "application/json", _once(json_bytes({"input_tokens": count})))

    return open_count


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
