"""OpenAI's dialect (Chat Completions, and the legacy completions and embeddings beside it):
``{"error": {...}}`` bodies, ``data: {"error": ...}`` with no ``[DONE]`` for a stream that
fails, SSE comments as heartbeats, and answers passed through as the upstream sent them."""

from __future__ import annotations

import json
from typing import Protocol

from ..abc import JSONObject, JSONValue
from ..errors import GatewayError, UpstreamProtocolError, error_event, error_json
from ..keepalive import KeepaliveSettings
from ..usage import parse_usage, usage_of
from .base import NOTHING, Dialect, Fed, Shape, StreamPipe, Tokens, utf8_json, whole_object

__all__ = [
    "CHAT",
    "ChatDialect",
    "ChatPassthrough",
    "ChatTranslator",
    "FromChatStream",
    "arguments_text",
    "chat_answer",
    "comment_heartbeat",
    "first_choices",
    "note_usage",
    "text_of",
]


def comment_heartbeat(policy: KeepaliveSettings) -> bytes:
    """An SSE comment event: ``: <comment>`` (a bare ``:`` for an empty comment)."""
    return (f": {policy.comment}\n\n" if policy.comment else ":\n\n").encode()


class ChatDialect(Dialect):
    name = "chat"

    def status(self, error: GatewayError) -> int:
        return error.status

    def error_json(self, error: GatewayError) -> bytes:
        return error_json(error)

    def error_event(self, error: GatewayError, model: str = "") -> bytes:
        return error_event(error)

    def heartbeat(self, policy: KeepaliveSettings) -> bytes:
        return comment_heartbeat(policy)


CHAT = ChatDialect()


def note_usage(document: str | bytes | JSONObject, tokens: Tokens) -> bool:
    """Take token counts (and the model named beside them) from the document's OpenAI
    ``usage``, if any; true for a usage-only chunk (``stream_options.include_usage``'s
    last)."""
    usage = usage_of(document) if isinstance(document, dict) else parse_usage(document)
    if usage is None:
        return False
    if usage.prompt_tokens is not None:
        tokens.prompt = usage.prompt_tokens
    if usage.completion_tokens is not None:
        tokens.completion = usage.completion_tokens
    if usage.model is not None:
        tokens.model = usage.model
    return usage.only


class _ChatStream(StreamPipe):
    """The upstream's events unchanged, whole, up to ``[DONE]``; usage-only chunks dropped
    when the gateway asked for them and the client did not."""

    __slots__ = ("_hide_usage",)

    unfinished = "upstream closed the stream before [DONE]"

    def __init__(self, hide_usage: bool) -> None:
        super().__init__()
        self._hide_usage = hide_usage

    def feed(self, chunk: bytes) -> Fed:
        events = self._framer.feed(chunk)
        if not events:
            return NOTHING
        out: list[bytes] = []
        data = end = False
        for event in events:
            text = event.data
            if text is not None:
                if '"usage"' in text and note_usage(text, self.tokens) and self._hide_usage:
                    continue
                data = True
                if event.is_done:
                    out.append(event.raw)
                    end = True
                    break  # nothing after the terminal event is relayed
            out.append(event.raw)
        return Fed(b"".join(out), data, end)


class ChatPassthrough(Shape):
    """An OpenAI answer to an OpenAI client: bytes unchanged, usage noted."""

    __slots__ = ("hide_usage",)

    def __init__(self, hide_usage: bool = False) -> None:
        self.hide_usage = hide_usage

    def stream(self) -> StreamPipe:
        return _ChatStream(self.hide_usage)

    def whole(self, body: bytes, tokens: Tokens) -> bytes:
        note_usage(whole_object(body), tokens)
        return body


class ChatTranslator(Protocol):
    """Turns chat chunks into another dialect's events (whole SSE events as bytes)."""

    def feed(self, chunk: JSONObject) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...


class FromChatStream(StreamPipe):
    """A chat stream translated to another dialect: each upstream chunk, parsed, goes to the
    ``translator``, and ``[DONE]`` to its ``finish``; the upstream's comments are dropped
    (chat's heartbeats: the gateway sends the client's own). What the translator makes
    before the answer's first output is held (``held`` starts the hold) and goes out with
    it, so a failover before it shows the client one answer; :meth:`releases` says when."""

    __slots__ = ("_held", "translator")

    unfinished = "upstream closed the stream before [DONE]"

    def __init__(self, translator: ChatTranslator, held: list[bytes]) -> None:
        super().__init__()
        self.translator = translator
        self._held: list[bytes] | None = held

    @property
    def opened(self) -> bool:
        """Some of the answer reached the client (nothing is held back any more)."""
        return self._held is None

    def release_held(self) -> bytes:
        """What is held back, taken out of the hold (all of it, once)."""
        held, self._held = self._held or [], None
        return b"".join(held)

    def releases(self, held: list[bytes]) -> bool:
        """Whether ``held`` (not ending the stream) may go out now: by default, as soon
        as the translator made anything after what the hold started with."""
        return True

    def feed(self, chunk: bytes) -> Fed:
        events = self._framer.feed(chunk)
        if not events:
            return NOTHING
        out: list[bytes] = []
        end = False
        failure = None
        try:
            for event in events:
                text = event.data
                if text is None:
                    continue
                if event.is_done:
                    out.extend(self.translator.finish())
                    end = True
                    break
                if '"usage"' in text:
                    note_usage(text, self.tokens)
                out.extend(self.translator.feed(_chunk(text)))
        except UpstreamProtocolError as error:
            # What the earlier events of this piece made goes out before the error: the
            # translator counted it (sequence numbers, the items a failed response lists).
            failure = error
        if not out:
            return NOTHING if failure is None else Fed(failure=failure)
        if self._held is not None:
            self._held.extend(out)
            if not end and not self.releases(self._held):
                # Nothing of the answer out yet: the next target may still answer.
                return NOTHING if failure is None else Fed(failure=failure)
            out, self._held = self._held, None
        return Fed(b"".join(out), True, end, failure)


def text_of(content: JSONValue) -> str:
    """The text of a chat message's (or delta's) ``content``: a string, or a list of parts
    as some servers send it (Mistral's), their texts joined."""
    if isinstance(content, list):
        return "".join(
            str(part.get("text")) for part in content if isinstance(part, dict) and "text" in part
        )
    return content if isinstance(content, str) else ""


def arguments_text(value: JSONValue) -> str:
    """A tool call's ``arguments`` as JSON text: as sent, or an object some servers send
    in its place written out."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class CallKeys:
    """The tool calls a stream translation opened, one call at a time, by the upstream's
    index and id: an index that comes back after another call began, with no name and no
    new id, is parallel calls interleaved, which such a translation cannot follow (its
    blocks or items go out one after another). A name or a new id with it is a new call
    (some servers give every parallel call index 0)."""

    __slots__ = ("_ids", "_indexes")

    def __init__(self) -> None:
        self._indexes: set[int] = set()
        self._ids: set[str] = set()

    def opening(self, index: JSONValue, call_id: str, name: JSONValue) -> None:
        """Note that a call opens now. Raises :class:`~gateway.errors.UpstreamProtocolError`
        for an earlier call going on."""
        new_call = (isinstance(name, str) and name) or (call_id and call_id not in self._ids)
        if call_id:
            self._ids.add(call_id)
        if not isinstance(index, int) or isinstance(index, bool):
            return
        if index in self._indexes and not new_call:
            raise UpstreamProtocolError(
                f"upstream interleaved parallel tool calls: call {index} went on after "
                "another began, and the gateway translates them one at a time"
            )
        self._indexes.add(index)


def first_choices(chunk: JSONObject) -> list[JSONObject]:
    """The choices of index 0 in a chat chunk, which translation carries (one answer per
    request). Raises :class:`~gateway.errors.UpstreamProtocolError` for a chunk that is an
    upstream's error object instead."""
    error = chunk.get("error")
    if error:  # (as the SDKs read it: `"error": null` or false is none)
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamProtocolError(f"upstream failed mid-stream: {message}")
    choices = chunk.get("choices")
    return [
        choice
        for choice in (choices if isinstance(choices, list) else [])
        if isinstance(choice, dict) and choice.get("index", 0) == 0
    ]


def chat_answer(body: bytes, tokens: Tokens) -> JSONObject:
    """A whole chat answer, parsed once for translation, its usage noted. Raises
    :class:`~gateway.errors.UpstreamProtocolError` for a body that is not a JSON object."""
    answer = whole_object(body)
    note_usage(answer, tokens)
    return answer


def translated_body(doc: JSONObject) -> bytes:
    """A translated whole answer as its body (:func:`~gateway.dialects.base.utf8_json`)."""
    return utf8_json(doc)


def _chunk(text: str) -> JSONObject:
    try:
        doc = json.loads(text)
    except ValueError:
        raise UpstreamProtocolError(
            f"upstream sent a chunk that is not JSON: {text[:200]!r}"
        ) from None
    if not isinstance(doc, dict):
        raise UpstreamProtocolError(f"upstream sent a chunk that is not an object: {text[:200]!r}")
    return doc
