"""One model instance: a ``llama_cpp.Llama`` and the worker-thread half of every request.

This is the only module that imports ``llama_cpp``; the backend imports it lazily, so the
gateway starts (and validates configs) without the ``local`` extra installed.

Threads: :func:`load`, :meth:`Engine.run` and :meth:`Engine.close` block and run in worker
threads, one at a time per engine (a ``Llama`` is not safe for concurrent use). The
exception is :meth:`Engine.count_chat_tokens`, which may run beside a job: it uses only the
model's vocabulary, never its context (see there). The only call that crosses from the trio
thread into a running job is :meth:`Job.stop`, which sets a flag that the job checks

* after every sampled token, and before every decode, and
* inside llama.cpp, between the graph nodes of a long decode (its abort callback), so a
  long prompt's prefill stops in the middle too.

So generation stops within one token of :meth:`Job.stop`, in every phase.
"""

from __future__ import annotations

import base64
import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import jinja2
import llama_cpp
import llama_cpp.llama_chat_format

from gateway.abc import (
    SSE_DONE,
    CannotCountTokens,
    ConfigError,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    context_window_exceeded,
    json_bytes,
    sse_data,
)

from ._protocol import (
    EmbeddingRequest,
    TextRequest,
    Usage,
    choice_text,
    fold_system,
    matched_stop,
    usage_chunk,
)
from ._settings import LlamaCppPythonSettings

log = logging.getLogger("backends.llamacpp_python")

__version__: str = llama_cpp.__version__

_POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}

Emit = Callable[[bytes | GatewayError], None]
"""Hands one item to the trio side; blocks while its buffer is full. Raises :class:`Stopped`
once nobody will read it (the request is gone)."""


class Stopped(Exception):
    """The job was told to stop (client gone, shutdown), or its reader went away."""


def supports_gpu_offload() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


class Job:
    """One request's run on one engine, shared by the trio side and the worker thread.

    Counters are written by the worker thread only; :meth:`stop` by the trio side only.
    """

    def __init__(self, request: TextRequest | EmbeddingRequest) -> None:
        self.request = request
        self._stop = threading.Event()
        self.prompt_tokens = 0
        self.sampled = 0
        """Tokens sampled for this request, the end-of-generation token included."""
        self.sampled_at_stop: int | None = None
        """:attr:`sampled` when :meth:`stop` was first called: what was made before it."""
        self.stop_requested_at: float | None = None
        self.last_was_eog = False
        self.generated: list[int] | None = (
            [] if isinstance(request, TextRequest) and request.stop else None
        )
        """The tokens sampled, kept only when the request has stop strings (to name the one
        that ended it: see :meth:`Engine._stop_reason`)."""
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.stopped = False
        """Whether the job ended because it was stopped, rather than by finishing."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the worker to stop within one token. Idempotent, never blocks."""
        if not self._stop.is_set():
            self.sampled_at_stop = self.sampled
            self.stop_requested_at = time.monotonic()
            self._stop.set()

    def usage(self) -> Usage:
        # Counted like llama-cpp-python's own usage: the end-of-generation token is not text.
        return Usage(self.prompt_tokens, self.sampled - (1 if self.last_was_eog else 0))


class _Llama(llama_cpp.Llama):
    """``Llama`` with hooks the engine uses to count tokens and to stop a job:
    ``generate()`` calls :meth:`eval` for the prompt and each token it feeds back, and
    :meth:`sample` once per token."""

    on_eval: Callable[[int], None] | None = None
    on_token: Callable[[int], None] | None = None

    def eval(self, tokens: Sequence[int]) -> None:
        if self.on_eval is not None:
            self.on_eval(len(tokens))
        super().eval(tokens)

    def sample(self, *args: Any, **kwargs: Any) -> int:
        token = cast(int, super().sample(*args, **kwargs))
        if self.on_token is not None:
            self.on_token(token)
        return token


class _Prompt(Exception):
    def __init__(self, prompt: str | list[int]) -> None:
        super().__init__("the prompt was captured")
        self.prompt = prompt


class _NotLent(Exception):
    """A chat handler asked the stand-in for a part of the model it does not lend."""


class _PromptCapture:
    """Stands in for the ``Llama`` a chat handler is given: it lends the chat formats and
    the tokenizer, and :meth:`create_completion` raises :class:`_Prompt` with the prompt
    instead of generating. Anything else (the context, the sampler, ``eval``) raises
    :class:`_NotLent`, so a count never touches what a running job uses."""

    _LENT = frozenset(
        {
            "chat_format",
            "chat_handler",
            "_chat_handlers",  # the GGUF's templates, read by create_chat_completion
            "metadata",
            "verbose",
            "tokenize",
            "detokenize",
            "token_bos",
            "token_eos",
        }
    )

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        if name in self._LENT:
            return getattr(self._llama, name)
        raise _NotLent(name)

    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        raise _Prompt(kwargs["prompt"] if "prompt" in kwargs else args[0])


class Engine:
    """One loaded model copy. Not thread-safe: run one job at a time (the backend's InstanceLender sees to it)."""

    def __init__(self, llama: _Llama, *, index: int, backend_id: str, cache_prompt: bool) -> None:
        self.index = index
        self.backend_id = backend_id
        self.tokens_generated = 0
        """Every token this instance has sampled, ever. Tests read it to prove a stop."""
        self.current: Job | None = None
        self.last: Job | None = None
        self._llama = llama
        self._cache_prompt = cache_prompt
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        # llama.cpp calls an abort callback between the graph nodes of a decode, hundreds
        # of times per call, and a Python one needs the GIL each time: while the event loop
        # is busy, that would slow every token. So it is installed only for decodes of many
        # tokens (prefill, embeddings), where it matters; a token's decode is short, and the
        # stop is checked after each token anyway.
        self._abort_callback = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_abort_callback = llama_cpp.ggml_abort_callback()
        self._abortable = False

    def _should_abort(self, _data: object) -> bool:
        job = self.current
        return job is not None and job.stopping

    def _set_abortable(self, abortable: bool) -> None:
        if abortable != self._abortable:
            callback = self._abort_callback if abortable else self._no_abort_callback
            llama_cpp.llama_set_abort_callback(self._llama.ctx, callback, None)
            self._abortable = abortable

    def _on_eval(self, n_tokens: int) -> None:
        job = self.current
        if job is not None and job.stopping:
            raise Stopped
        self._set_abortable(n_tokens > 1)

    def _on_token(self, token: int) -> None:
        job = self.current
        if job is None:
            return
        if job.stopping:
            raise Stopped  # the token just sampled is dropped, never counted or sent
        self.tokens_generated += 1
        job.sampled += 1
        if job.sampled == 1:
            job.prompt_tokens = self._llama.n_tokens
        job.last_was_eog = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        if job.generated is not None:
            job.generated.append(token)

    def run(self, job: Job, emit: Emit) -> None:
        """Serve ``job`` (blocking; call from a worker thread), sending its bytes through
        ``emit`` as they are made: SSE events for a stream, one JSON body otherwise.
        For a request with stop strings the choice says, as vLLM's do, which one ended it
        (``stop_reason``, null for an end-of-generation token or the length), in the chunk
        that carries ``finish_reason`` when streamed; without them, the answer is
        llama-cpp-python's own.

        Never raises for the request's own failures: they are emitted as a
        :class:`~gateway.abc.GatewayError` after any bytes already sent. Returns early,
        silently, when the job is stopped or ``emit`` raises :class:`Stopped`.
        """
        job.started_at = time.monotonic()
        self.current = job
        self._llama.on_eval = self._on_eval
        self._llama.on_token = self._on_token
        try:
            request = job.request
            cache_prompt = (
                request.cache_prompt
                if isinstance(request, TextRequest) and request.cache_prompt is not None
                else self._cache_prompt
            )
            if not cache_prompt:
                self._llama.reset()
            if isinstance(request, EmbeddingRequest):
                emit(json_bytes(self._embed(request)))
            elif request.stream:
                self._stream(job, request, emit)
            else:
                emit(json_bytes(self._answer(job, request)))
        except Stopped:
            job.stopped = True
        except Exception as error:
            # An aborted decode surfaces as a RuntimeError from llama-cpp-python.
            if job.stopping:
                job.stopped = True
                return
            try:
                emit(self._map_error(error))
            except Stopped:
                job.stopped = True
        finally:
            self._llama.on_eval = self._llama.on_token = None
            self.current = None
            self.last = job
            job.finished_at = time.monotonic()

    def count_chat_tokens(self, request: TextRequest) -> int:
        """The number of prompt tokens :meth:`run` would evaluate for the chat ``request``.

        The chat goes through ``create_chat_completion`` with the same arguments as in a
        generation, so the same chat handler renders it (the named ``chat_format``, or the
        GGUF's template) and tokenizes it with the same ``add_bos``/``special`` flags; the
        handler is given a stand-in for the model that stops it, prompt in hand, where it
        would start generating. Blocking (call from a worker thread).

        Safe beside a job running on this engine: the stand-in lends the handler the chat
        formats and the tokenizer only, and tokenizing reads the vocabulary alone, which
        llama.cpp never changes after loading (llama-server tokenizes in its HTTP threads
        while its slots decode). Raises :class:`~gateway.abc.InvalidRequest` for a chat
        the template refuses, :class:`~gateway.abc.CannotCountTokens` for a chat handler
        that needs more of the model than its tokenizer.
        """
        options = dict(request.options, model=request.model, stream=False)
        try:
            # Unbound, so that the handler is resolved on (and given) the stand-in.
            llama_cpp.Llama.create_chat_completion(
                _PromptCapture(self._llama), messages=self._messages(request), **options
            )
        except _Prompt as captured:
            return self._prompt_length(captured.prompt)
        except _NotLent as refused:
            raise CannotCountTokens(
                f"backend {self.backend_id} cannot count tokens: its chat format "
                f"{self._llama.chat_format!r} needs the model's {refused} to build a prompt"
            ) from None
        except Exception as error:
            raise self._map_error(error) from None
        raise CannotCountTokens(  # a handler that answers without generating
            f"backend {self.backend_id} cannot count tokens: its chat format "
            f"{self._llama.chat_format!r} answered without prompting the model"
        )

    def _prompt_length(self, prompt: str | list[int]) -> int:
        if isinstance(prompt, list):
            return len(prompt)  # the handler tokenized it: create_completion adds nothing
        # A text prompt is tokenized by create_completion itself: special tokens parsed,
        # the BOS token first and the SEP/EOS token last where the vocabulary adds them.
        vocab = self._vocab
        tokens = len(self._llama.tokenize(prompt.encode(), add_bos=False, special=True))
        bos = llama_cpp.llama_vocab_bos(vocab)
        sep = llama_cpp.llama_vocab_sep(vocab)
        tokens += int(bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and bos != -1)
        tokens += int(sep != -1 or bool(llama_cpp.llama_vocab_get_add_eos(vocab)))
        return tokens

    def _create(self, request: TextRequest, *, stream: bool) -> Any:
        options = dict(request.options, model=request.model, stream=stream)
        # Without a seed of its own, llama-cpp-python samples on from the last request's
        # (the same answers after every restart; one client's seed steering the next).
        options.setdefault("seed", secrets.randbits(32))
        if request.kind == "chat":
            return self._llama.create_chat_completion(messages=self._messages(request), **options)
        prompt = request.prompt
        if isinstance(prompt, list) and any(t >= self._llama.n_vocab() for t in prompt):
            # llama.cpp's decode fails on it (a RuntimeError, the backend's failure): the
            # client's error, and no reason to eject a model that is fine.
            raise InvalidRequest(
                f"prompt: a token id is past the model's vocabulary ({self._llama.n_vocab()})",
                param="prompt",
            )
        return self._llama.create_completion(prompt=prompt, **options)

    def _answer(self, job: Job, request: TextRequest) -> Any:
        answer = self._create(request, stream=False)
        if request.stop:
            choice = answer["choices"][0]
            choice["stop_reason"] = self._stop_reason(job, request, choice, choice_text(choice))
        return answer

    def _stream(self, job: Job, request: TextRequest, emit: Emit) -> None:
        first: dict[str, Any] | None = None
        texts: list[str] | None = [] if request.stop else None
        chunks: Iterator[dict[str, Any]] = self._create(request, stream=True)
        with closing(chunks):  # type: ignore[type-var]
            for chunk in chunks:
                if first is None:
                    first = chunk
                if texts is not None:
                    choice = chunk["choices"][0]
                    texts.append(choice_text(choice))
                    if choice["finish_reason"] is not None:
                        text = "".join(texts)
                        choice["stop_reason"] = self._stop_reason(job, request, choice, text)
                emit(sse_data(chunk))
        if request.include_usage and first is not None:
            emit(sse_data(usage_chunk(first, job.usage())))
        emit(SSE_DONE)

    def _stop_reason(
        self, job: Job, request: TextRequest, choice: dict[str, Any], text: str
    ) -> str | None:
        """vLLM's ``stop_reason`` for a request with stop strings: the one that ended the
        answer ``text``, None when something else did. llama-cpp-python says
        ``finish_reason: "stop"`` for an end-of-generation token and a stop string alike."""
        if choice["finish_reason"] != "stop" or job.last_was_eog or not job.generated:
            return None
        # All the tokens, as llama-cpp-python detokenizes them to look for stop strings.
        generated = self._llama.detokenize(job.generated)
        return matched_stop(generated, text, request.stop)

    def _embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        self._set_abortable(True)  # create_embedding decodes without eval()
        result = cast(
            dict[str, Any], self._llama.create_embedding(request.inputs, model=request.model)
        )
        if request.base64:
            for item in result["data"]:
                vector = item["embedding"]
                item["embedding"] = base64.b64encode(
                    struct.pack(f"<{len(vector)}f", *vector)
                ).decode("ascii")
        return result

    def _messages(self, request: TextRequest) -> list[dict[str, str]]:
        """The chat as the model's chat format is given it (generation and count alike)."""
        if self._llama.chat_format in _NO_SYSTEM_ROLE:
            return fold_system(request.messages)
        return list(request.messages)

    def _map_error(self, error: Exception) -> GatewayError:
        # llama-cpp-python reports bad input (a prompt longer than the context, a chat the
        # template refuses) as ValueError or a jinja2 error; anything else is its failure.
        if isinstance(error, GatewayError):  # the gateway's own refusal, as it is
            return error
        if isinstance(error, (ValueError, jinja2.TemplateError)):
            return context_window_exceeded(str(error)) or InvalidRequest(str(error))
        log.error(
            "backend %s instance %d: llama.cpp failed", self.backend_id, self.index, exc_info=error
        )
        return UpstreamError(f"backend {self.backend_id}: llama.cpp failed: {error}")

    def close(self) -> None:
        """Free the model and its context (blocking)."""
        self._llama.close()


# Chat formats that drop system messages: llama-cpp-python's "gemma" renders only the user
# and model turns (and says so at debug level), so a system prompt, a developer message or a
# Responses ``instructions`` never reached the model.
_NO_SYSTEM_ROLE = frozenset({"gemma"})


def check_chat_format(name: str, where: str) -> None:
    try:
        llama_cpp.llama_chat_format.get_chat_completion_handler(name)
    except llama_cpp.llama_chat_format.LlamaChatCompletionHandlerNotFoundException as error:
        raise ConfigError(f"{where}: {error}") from None


def load(
    path: Path,
    settings: LlamaCppPythonSettings,
    *,
    n_gpu_layers: int,
    index: int,
    backend_id: str,
) -> Engine:
    """Load one instance of the model at ``path`` (blocking). Raises :class:`ConfigError`
    when llama.cpp cannot load it, or when it cannot serve what the settings ask."""
    where = f"backends.{backend_id}"
    llama = _load(path, settings, settings.n_ctx, n_gpu_layers, where)
    if llama.n_ctx() != len(llama.input_ids):
        # llama.cpp rounds the context up (to a multiple of 256) but llama-cpp-python sized
        # its token buffer by the request, and a prompt between the two sizes would crash
        # in numpy. Load again with the size llama.cpp really uses.
        n_ctx = llama.n_ctx()
        llama.close()
        log.info("backend %s: n_ctx %d is rounded up to %d", backend_id, settings.n_ctx, n_ctx)
        llama = _load(path, settings, n_ctx, n_gpu_layers, where)
    if settings.embedding and llama_cpp.llama_pooling_type(llama.ctx) in (
        llama_cpp.LLAMA_POOLING_TYPE_NONE,
        llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    ):
        llama.close()
        raise ConfigError(
            f"{where}.pooling: {path.name} defines no pooling, so it has no embedding per "
            'input; set pooling = "mean" (or "last" for a decoder model)'
        )
    if (
        settings.chat_format is None
        and not settings.embedding
        and "tokenizer.chat_template" not in llama.metadata
    ):
        log.warning(
            "backend %s: %s has no chat template and chat_format is not set; chat requests "
            "use llama-cpp-python's fallback format %r",
            backend_id,
            path.name,
            llama.chat_format,
        )
    return Engine(llama, index=index, backend_id=backend_id, cache_prompt=settings.cache_prompt)


def _load(
    path: Path, settings: LlamaCppPythonSettings, n_ctx: int, n_gpu_layers: int, where: str
) -> _Llama:
    kwargs: dict[str, Any] = {}
    if settings.pooling != "model":
        kwargs["pooling_type"] = _POOLING[settings.pooling]
    try:
        return _Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=settings.n_batch,
            n_gpu_layers=n_gpu_layers,
            n_threads=settings.n_threads,
            chat_format=settings.chat_format,
            embedding=settings.embedding,
            verbose=False,
            **kwargs,
        )
    except ValueError as error:
        raise ConfigError(
            f"{where}.model: llama.cpp could not load {path} ({error}): the file is corrupt or "
            f"truncated, or its architecture is newer than llama-cpp-python {__version__}"
        ) from None
