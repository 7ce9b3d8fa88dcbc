"""The plugin-facing API: everything a backend author imports lives here.

A backend is a class derived from ``Backend[MySettings]`` (see :data:`SettingsT`), with its
settings class derived from :class:`BackendSettings`, registered under the entry-point group
``trio_gateway.backends``::

    [project.entry-points."trio_gateway.backends"]
    mybackend = "my_package:MyBackend"

The gateway owns the client side (heartbeats, timers on upstream bytes, error mapping,
cancellation). A backend only turns an :class:`UpstreamRequest` into an
:class:`UpstreamResponse`:

* :meth:`Backend.open_response` is an async context manager. It is entered once the
  upstream has answered with a 2xx status, and its response's :attr:`~UpstreamResponse.body`
  yields the answer's bytes (SSE for a streamed request, JSON otherwise) as they arrive.
* Failures are raised as :class:`UpstreamError` subclasses: connection problems as
  :class:`UpstreamConnectError`, non-2xx answers as :class:`UpstreamStatusError` (status
  and message kept), broken bodies as :class:`UpstreamProtocolError`. Anything else is a bug
  and is reported to the client as a 500.
* Cancellation may arrive at any await. Leaving the context — normally, by an exception, or
  by cancellation — must close the upstream request at once and leak nothing; the gateway
  relies on this to free upstream slots when a client goes away.
* Timers (``first_byte``, ``idle``, ``total``) are enforced by the gateway on the bytes the
  body yields; a backend applies only ``connect`` itself.

What else this module offers, and what for (every name here is the plugin API; the rest of
the ``gateway`` package is internal):

* Settings: :class:`BackendSettings` and the gateway's own tables in it (:class:`Timeouts`,
  :class:`AdmissionSettings`, :class:`EjectionSettings`); :func:`http_base_url` checks a URL
  field, :func:`header_secret` a key sent in a header.
* More errors, for backends that do more than relay: :class:`ConfigError` from
  :meth:`Backend.running` for what only start-up can find (a model file or a binary that is
  missing; name the dotted path, ``backends.<id>.model: ...``); :class:`InvalidRequest`
  (400) for a request a backend validates itself and cannot serve (an HTTP backend raises
  :class:`UpstreamStatusError` with the upstream's own status instead, which becomes
  :class:`ContextWindowExceeded` by itself when it says the prompt is too long);
  :class:`ContextWindowExceeded` (400) for a request over the model's context window (the
  prompt, or the prompt with its ``max_tokens``), with the sizes when known (each dialect
  words it as its clients act on: Codex, Claude Code), and :func:`context_window_exceeded`
  to recognise an engine's own words for it (llama.cpp's, vLLM's, OpenAI's, Anthropic's);
  :class:`ShuttingDown` (503) for a request the backend can no longer serve because it is
  stopping; :class:`Overloaded` when it has no room and no queue; :class:`GatewayError`,
  the base of them all, to annotate or catch any of them.
* OpenAI's shapes as bytes, for backends that make their answers rather than relay them:
  :func:`sse_data` (one ``data:`` event of compact JSON), :data:`SSE_DONE`,
  :func:`json_bytes` (a whole JSON body) and :class:`CompletionEncoder` (the chunks and
  the whole answer of a chat or text completion).
* Dialects: a backend speaks OpenAI's endpoints unless :attr:`Backend.native_endpoints`
  lists more (a backend table's ``native_endpoints`` overrides it); Anthropic ``messages``
  reach it translated to ``chat/completions`` otherwise, and a token count asks
  :meth:`Backend.count_tokens`, which refuses with :class:`CannotCountTokens` unless the
  backend can count exactly.
* Worker processes (``[server] workers`` above 1): by default every worker runs its own
  instance of a backend (its own pools). A backend that owns something one machine should
  run once — a child process, a model in memory — says so with :attr:`Backend.placement`:
  ``"parent"`` backends run once in the parent process, and the workers reach them through
  :meth:`Backend.address` and :meth:`Backend.reached_at`; ``"single"`` ones refuse to start
  with several workers.
* Types: :data:`Endpoint`, :data:`Placement`, :data:`OPENAI_ENDPOINTS`, :data:`JSONObject`, :data:`JSONValue`, :class:`BackendStatus`
  and :data:`Health`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from typing_extensions import TypeVar

from .chunks import SSE_DONE, CompletionEncoder, json_bytes, sse_data
from .errors import (
    CannotCountTokens,
    ConfigError,
    ContextWindowExceeded,
    GatewayError,
    InvalidRequest,
    Overloaded,
    ShuttingDown,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    context_window_exceeded,
)
from .keepalive import KeepaliveOverride

__all__ = [
    "OPENAI_ENDPOINTS",
    "SSE_DONE",
    "AdmissionSettings",
    "Backend",
    "BackendSettings",
    "BackendStatus",
    "CannotCountTokens",
    "CompletionEncoder",
    "ConfigError",
    "ContextWindowExceeded",
    "EjectionSettings",
    "Endpoint",
    "GatewayError",
    "Health",
    "InvalidRequest",
    "JSONObject",
    "JSONValue",
    "Overloaded",
    "Placement",
    "SettingsT",
    "ShuttingDown",
    "Timeouts",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "context_window_exceeded",
    "header_secret",
    "http_base_url",
    "json_bytes",
    "sse_data",
]

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"

Endpoint = Literal[
    "chat/completions",
    "completions",
    "embeddings",
    "messages",
    "messages/count_tokens",
    "responses",
    "responses/input_tokens",
]
"""An upstream endpoint, as the path under the API's ``/v1``. ``messages`` and
``messages/count_tokens`` are Anthropic's, ``responses`` and ``responses/input_tokens``
OpenAI's Responses API; a backend gets them only when it speaks them natively
(:attr:`Backend.native_endpoints`), and chat translated from them otherwise (the counts:
:meth:`Backend.count_tokens`)."""

OPENAI_ENDPOINTS: frozenset[Endpoint] = frozenset(("chat/completions", "completions", "embeddings"))
"""What a backend speaks natively unless it says otherwise: OpenAI's endpoints."""


def http_base_url(value: str) -> str:
    """``value`` checked as an http(s) URL with a host, without its trailing slash. Raises
    ``ValueError``, so a settings ``field_validator`` can simply return it. What the
    gateway would not send is refused rather than dropped: credentials (use ``api_key``),
    a query or a fragment."""
    import httpx  # only at config time

    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as error:  # not a ValueError: pydantic would let it through
        raise ValueError(f"{value!r} is not a valid URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"{value!r}: port {url.port} is out of range")
    if url.userinfo:
        raise ValueError("a URL with credentials: give the key as api_key instead")
    if url.query or url.fragment:
        raise ValueError(f"{value!r}: a base URL has no query or fragment")
    return value.rstrip("/")


def header_secret(value: SecretStr | None) -> SecretStr | None:
    """A secret the gateway sends in a header (an ``api_key``): surrounding whitespace
    dropped — a key read from a mounted file usually ends with a newline — and refused,
    without being echoed, when what is left is empty or cannot be a header value. A
    settings ``field_validator`` can simply return it."""
    if value is None:
        return None
    text = value.get_secret_value().strip()
    if not text:
        raise ValueError("is empty")
    if not all(" " <= c <= "~" for c in text):
        raise ValueError("holds a character a header cannot carry (a control character?)")
    return SecretStr(text)


class Timeouts(BaseModel):
    """Upstream timers, in seconds; ``None`` means no limit. They are measured on upstream
    bytes only: heartbeats to the client never reset them.

    * ``connect`` — establishing the connection to the upstream.
    * ``first_byte`` — from sending the request to the first byte of the response body.
    * ``idle`` — between two body bytes, once the first has arrived.
    * ``total`` — the whole exchange.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float | None = Field(10.0, gt=0)
    first_byte: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)


class AdmissionSettings(BaseModel):
    """How many requests the gateway sends this backend at once, and how many may wait.

    Waiting requests queue in FIFO order (streaming clients get heartbeats meanwhile); one
    that arrives to a full queue, or waits longer than ``queue_timeout``, is refused with
    ``queue_full_status`` and ``Retry-After`` (or tried on the route's next target).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrency: int | None = Field(None, gt=0, description="None: no limit")
    max_queue: int = Field(100, ge=0)
    queue_timeout: float | None = Field(None, gt=0)
    queue_full_status: Literal[429, 503] = 429


class EjectionSettings(BaseModel):
    """Passive health: after ``failures`` consecutive failed attempts the backend leaves
    rotation for ``cooldown`` seconds, then gets one trial request (half-open)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(3, ge=0, description="0: never eject")
    cooldown: float = Field(30.0, gt=0)


class BackendSettings(BaseModel):
    """Base of every backend's settings. Subclass it and add your fields; unknown keys are
    rejected, and values are validated when the gateway starts (``gateway check`` too).
    ``timeouts``, ``admission``, ``ejection`` and ``keepalive`` are the gateway's, for every
    backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    timeouts: Timeouts = Timeouts()
    admission: AdmissionSettings = AdmissionSettings()
    ejection: EjectionSettings = EjectionSettings()
    keepalive: KeepaliveOverride = Field(
        default_factory=KeepaliveOverride,
        description="what this backend changes of its routes' keepalive, for the requests "
        "sent to it first (unset fields: the route's)",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="the most a non-streamed answer may hold; past it the client gets a 502",
    )
    native_endpoints: frozenset[Endpoint] | None = Field(
        None,
        description=(
            "the endpoints the upstream serves itself, overriding the backend type's "
            'default (e.g. add "messages" for an `openai` backend whose server speaks '
            "Anthropic Messages); the others are translated to chat"
        ),
    )


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request for a backend.

    ``body`` is the client's JSON object with ``model`` already rewritten to the name the
    upstream knows. ``headers`` carries only what the gateway passes upstream on purpose
    (``X-Request-ID``); the client's credentials are never in it.
    """

    endpoint: Endpoint
    body: JSONObject
    stream: bool
    request_id: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A 2xx answer from the upstream. ``body`` yields its bytes as they arrive; it raises
    :class:`~gateway.errors.UpstreamError` subclasses when the upstream fails mid-body."""

    status: int
    content_type: str
    body: AsyncIterator[bytes]


Health = Literal["ready", "loading", "down", "unknown"]

Placement = Literal["worker", "parent", "single"]
"""Where a backend runs when the gateway has several worker processes: ``"worker"``, one
instance in each; ``"parent"``, one in the parent process that the workers reach;
``"single"``, nowhere — the gateway refuses to start with more than one worker."""


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What a backend last knew about its upstream.

    ``health``: ``ready`` takes requests; ``loading`` is up but not ready yet (a model
    loading — "not ready", not "failed"); ``down`` failed its last check; ``unknown`` has
    not been checked (backends without a health signal stay here, and count as ready).
    ``running``/``queued`` are requests the upstream reports in progress and waiting;
    ``cache_usage`` is its KV-cache pressure in [0, 1]. ``None`` means not reported.
    """

    health: Health = "unknown"
    detail: str = ""
    running: int | None = None
    queued: int | None = None
    cache_usage: float | None = None
    checked_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.health in ("ready", "unknown")


SettingsT = TypeVar("SettingsT", bound=BackendSettings, default=BackendSettings, covariant=True)
"""The settings type of a :class:`Backend` subclass: ``class MyBackend(Backend[MySettings])``
types ``self.settings`` as ``MySettings``. A bare ``Backend`` is ``Backend[BackendSettings]``,
the type of any backend (covariant: settings are frozen and only read)."""


class Backend(abc.ABC, Generic[SettingsT]):
    """Base class of every backend. One instance serves one ``[backends.<id>]`` table.

    Subclass ``Backend[YourSettings]``, set :attr:`Settings` to the same class, and
    implement :meth:`open_response`. The gateway validates each table with ``Settings`` and
    passes the result to ``__init__``, so :attr:`settings` is an instance of it and needs no
    check. Long-lived resources (connection pools, child processes, loaded models) are
    opened in :meth:`running` and closed when it exits.
    """

    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    """The class that validates this backend's table; the one the type argument names."""

    native_endpoints: ClassVar[frozenset[Endpoint]] = OPENAI_ENDPOINTS
    """The endpoints :meth:`open_response` serves as the client's dialect (a backend
    table's ``native_endpoints`` overrides it). Requests in another dialect — Anthropic
    ``messages`` to a chat-only backend — reach the backend translated to
    ``chat/completions``; ``messages/count_tokens`` reaches :meth:`count_tokens`."""

    def __init__(self, id: str, settings: SettingsT) -> None:
        self.id = id
        self.settings = settings
        """This backend's ``[backends.<id>]`` table, validated (frozen)."""
        self.status = BackendStatus()
        """Last known health and load. Backends with a health or load signal update it
        (typically from a polling task started in :meth:`running`); the gateway reads it
        for readiness and routing and never blocks on it."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Hold the backend's resources for the gateway's lifetime. The default holds none."""
        yield

    @classmethod
    def placement(cls, settings: BackendSettings) -> Placement:
        """Where a backend with ``settings`` runs when ``[server] workers`` is above 1 (see
        :data:`Placement`). The default, ``"worker"``, suits anything that holds only
        connections; a backend that starts a server process returns ``"parent"``, one that
        holds a model in its own memory ``"single"``."""
        return "worker"

    def address(self) -> str:
        """For a ``"parent"`` backend, once :meth:`running` has been entered: where the
        workers reach it (passed to :meth:`reached_at` in each worker)."""
        raise NotImplementedError(
            f'{type(self).__name__} has placement "parent" but does not implement address(): '
            'implement it, or return "worker" from placement()'
        )

    @classmethod
    def reached_at(cls, settings: BackendSettings, address: str) -> BackendSettings:
        """For a ``"parent"`` backend: the settings by which a worker's instance reaches the
        one the parent runs at ``address`` (it starts nothing of its own)."""
        raise NotImplementedError(
            f'{cls.__name__} has placement "parent" but does not implement reached_at(): '
            'implement it, or return "worker" from placement()'
        )

    def speaks(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` reaches this backend as it is (not translated)."""
        native = self.settings.native_endpoints
        return endpoint in (native if native is not None else self.native_endpoints)

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """The exact number of prompt tokens the upstream would see for ``request`` (a
        ``chat/completions`` body: messages and tools) — from its tokenizer over its chat
        template, never an estimate. Backends that cannot count keep this default, which
        refuses with :class:`CannotCountTokens` (the client is told so)."""
        raise CannotCountTokens(
            f"backend {self.id} cannot count tokens: its upstream offers no tokenizer"
        )

    @abc.abstractmethod
    def open_response(
        self, request: UpstreamRequest
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``request`` upstream; enter once a 2xx status arrived. See the module doc."""
