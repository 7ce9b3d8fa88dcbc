"""A fake Ollama server, faithful to its API docs (``docs/api.md``) where the backend can
tell: real HTTP/1.1 on loopback, ``/api/chat`` and ``/api/generate``, NDJSON streams
(``application/x-ndjson``, chunked) whose last object has ``done: true``, ``done_reason``
and the token counts, ``{"error": "..."}`` bodies with Ollama's statuses (404 for a model
that is not pulled, 400 for a bad request), and an ``{"error": ...}`` line for a failure in
the middle of a stream.

Each model name the fake knows has a :class:`Behaviour`: how many tokens, how fast, and
which fault. Unknown models get Ollama's 404. Every request is recorded, and
:attr:`FakeOllama.active` counts the answers in progress: it drops as soon as the client
closes its connection, which is how tests see that cancellation reached the upstream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import trio

from gateway.testing.http11 import read_request

Fault = Literal["none", "error_line", "stall", "cut", "status"]


@dataclass(frozen=True, slots=True)
class Behaviour:
    tokens: int = 3
    pace: float = 0.0  # seconds between stream objects
    headers_delay: float = 0.0  # before the status line
    prefill: float = 0.0  # after the headers, before the first object
    gap_at: int | None = None
    gap: float = 0.0
    fault: Fault = "none"
    fault_after: int = 2
    status: int = 500  # for fault == "status"
    message: str = "an error from the fake"
    done_reason: str = "stop"


@dataclass(eq=False)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(eq=False)
class FakeOllama:
    models: dict[str, Behaviour] = field(default_factory=lambda: {"llama3.2": Behaviour()})
    requests: list[Received] = field(default_factory=list)
    active: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                received = await self._read(stream, conn)
                if received is None:
                    return
                keep = False  # stays so when the client's close cancels the answer
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_close, stream, nursery.cancel_scope)
                    self.active += 1
                    try:
                        keep = await self._answer(stream, conn, received)
                    finally:
                        self.active -= 1
                    nursery.cancel_scope.cancel()
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _watch_close(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        # The client sends nothing while it reads an answer: any read result is its close.
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            scope.cancel()

    async def _read(self, stream: trio.SocketStream, conn: h11.Connection) -> Received | None:
        incoming = await read_request(stream, conn)
        if incoming is None:
            return None
        head, body = incoming.head, incoming.body
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {"_invalid": body.decode("latin-1")}
        received = Received(
            head.target.decode(),
            {k.decode(): v.decode() for k, v in head.headers},
            doc if isinstance(doc, dict) else {"_invalid": doc},
        )
        self.requests.append(received)
        return received

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _fixed(
        self, stream: trio.SocketStream, conn: h11.Connection, status: int, doc: dict[str, Any]
    ) -> None:
        body = json.dumps(doc).encode()
        headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", str(len(body))),
        ]
        await self._send(stream, conn, h11.Response(status_code=status, headers=headers))
        await self._send(stream, conn, h11.Data(data=body))
        await self._send(stream, conn, h11.EndOfMessage())

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, req: Received) -> bool:
        if req.path not in ("/api/chat", "/api/generate"):
            await self._fixed(stream, conn, 404, {"error": "404 page not found"})
            return True
        if "_invalid" in req.body:
            await self._fixed(stream, conn, 400, {"error": "invalid character in request body"})
            return True
        model = req.body.get("model")
        if not isinstance(model, str) or not model:
            await self._fixed(stream, conn, 400, {"error": "model is required"})
            return True
        behaviour = self.models.get(model)
        if behaviour is None:
            message = f'model "{model}" not found, try pulling it first'
            await self._fixed(stream, conn, 404, {"error": message})
            return True
        await trio.sleep(behaviour.headers_delay)
        if behaviour.fault == "status":
            await self._fixed(stream, conn, behaviour.status, {"error": behaviour.message})
            return True
        chat = req.path == "/api/chat"
        objects = _objects(model, chat, behaviour, _prompt_tokens(req.body))
        if req.body.get("stream") is False:
            await trio.sleep(behaviour.prefill + behaviour.pace * behaviour.tokens)
            whole = dict(objects[-1])
            text = "".join(_text(o, chat) for o in objects)
            if chat:
                whole["message"] = {"role": "assistant", "content": text}
            else:
                whole["response"] = text
            await self._fixed(stream, conn, 200, whole)
            return True
        headers = [("content-type", "application/x-ndjson"), ("transfer-encoding", "chunked")]
        await self._send(stream, conn, h11.Response(status_code=200, headers=headers))
        await trio.sleep(behaviour.prefill)
        for i, obj in enumerate(objects):
            if i == behaviour.fault_after and behaviour.fault != "none":
                if behaviour.fault == "error_line":
                    await self._send(
                        stream, conn, h11.Data(data=_line({"error": behaviour.message}))
                    )
                    await self._send(stream, conn, h11.EndOfMessage())
                    return True
                if behaviour.fault == "stall":
                    await trio.sleep_forever()
                if behaviour.fault == "cut":
                    return False  # the connection closes without the chunked terminator
            if behaviour.gap_at == i:
                await trio.sleep(behaviour.gap)
            await self._send(stream, conn, h11.Data(data=_line(obj)))
            if behaviour.pace:
                await trio.sleep(behaviour.pace)
        await self._send(stream, conn, h11.EndOfMessage())
        return True


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _text(obj: dict[str, Any], chat: bool) -> str:
    return str(obj["message"]["content"] if chat else obj["response"])


def _prompt_tokens(body: dict[str, Any]) -> int:
    if isinstance(body.get("messages"), list):
        text = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", ""))
    return len(text.split())


def _objects(model: str, chat: bool, b: Behaviour, prompt_tokens: int) -> list[dict[str, Any]]:
    """The stream Ollama would send: one object per token, then the done object."""
    created = "2024-07-22T20:33:28.123648Z"

    def obj(piece: str, done: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {"model": model, "created_at": created}
        if chat:
            doc["message"] = {"role": "assistant", "content": piece}
        else:
            doc["response"] = piece
        doc["done"] = done
        return doc

    objects = [obj(f"tok{i} ", False) for i in range(b.tokens)]
    last = obj("", True)
    last.update(
        done_reason=b.done_reason,
        total_duration=4_883_583_458,
        load_duration=1_334_875,
        prompt_eval_count=prompt_tokens,
        prompt_eval_duration=342_546_000,
        eval_count=b.tokens,
        eval_duration=4_535_599_000,
    )
    if not chat:
        last["context"] = [1, 2, 3]
    objects.append(last)
    return objects
