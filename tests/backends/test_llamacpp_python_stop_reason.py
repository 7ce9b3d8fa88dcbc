"""``llamacpp-python`` names the stop string that ended an answer, as vLLM does: the choice's
``stop_reason`` (in the chunk that carries ``finish_reason`` when streamed), null when an
end-of-generation token or the length ended it, and no such field for a request without
stop strings. llama-cpp-python itself says ``finish_reason: "stop"`` for both.

First the rule, sans I/O (:func:`matched_stop`); then the real model through the gateway,
whole and streamed, chat and completions, against ``llama_cpp.Llama`` called directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from backends.llamacpp_python._protocol import choice_text, fold_system, matched_stop

from .llamacpp_python_helpers import StartLocal, chunk_text
from .sse_helpers import event_json, sse_events

if TYPE_CHECKING:  # the fast lane collects this module without llama-cpp-python
    import llama_cpp

# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generated", "content", "stops", "expected"),
    [
        # Unhappy first: no stop string of the client's begins where the answer was cut.
        (b"ab<end_of_turn>", "ab", ["x"], None),  # a chat format's own stop string did it
        (b"abcX", "ab", ["X"], None),  # X is there, but not where the text ends
        (b"abX", "zz", ["X"], None),  # the text is not a cut of these tokens
        (b"abX", "abX", ["X"], None),  # nor one that still holds the string
        (b"", "", ["X"], None),
        # The one there is.
        (b"abX", "ab", ["never", "X"], "X"),
        (b"X", "", ["X"], "X"),  # the first token wrote it: an empty answer
        (b"a\n\nb", "a", ["\n\n"], "\n\n"),
        ("ol\u00e9".encode(), "ol", ["\u00e9"], "\u00e9"),  # found by its UTF-8 bytes
        # One token completed two: a whole answer is cut at the first listed that is there,
        # a stream at the first in the text; the text says which one it was.
        (b" 5,", " 5", [",", " 5,"], ","),
        (b" 5,", "", [",", " 5,"], " 5,"),
        # Two that begin in the same place: the first listed.
        (b"abc", "", ["ab", "abc"], "ab"),
        (b"abc", "", ["abc", "ab"], "abc"),
        # An echoed prompt comes before the generated text.
        (b" 5, 6, 7", "1, 2, 3, 4, 5, 6,", [" 7"], " 7"),
        # A split character's bytes, which llama-cpp-python's text drops, are dropped here too.
        (b"a\xe2\x82X", "a", ["X"], "X"),
    ],
)
def test_the_stop_string_is_the_one_that_begins_where_the_text_ends(
    generated: bytes, content: str, stops: list[str], expected: str | None
) -> None:
    assert matched_stop(generated, content, stops) == expected


def test_choice_text_reads_whole_and_streamed_chat_and_completion_choices() -> None:
    assert choice_text({"text": "a", "finish_reason": None}) == "a"
    assert choice_text({"message": {"role": "assistant", "content": "b"}}) == "b"
    assert choice_text({"delta": {"content": "c"}, "finish_reason": None}) == "c"
    assert choice_text({"delta": {"role": "assistant"}, "finish_reason": None}) == ""
    assert choice_text({"delta": {}, "finish_reason": "stop"}) == ""
    assert choice_text({"message": {"role": "assistant", "content": None}}) == ""


# -- the real model ------------------------------------------------------------------------

PROMPT = "1, 2, 3, 4,"  # the model counts on: " 5, 6, 7, 8," (a token per character)
MESSAGES = [{"role": "user", "content": "Name three colours."}]
UNSEEN = "never-seen"


async def _answers(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole answer's choice, and the streamed choices (the usage chunk's none)."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    body = {"model": "gemma", "temperature": 0, **body}
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    [whole] = response.json()["choices"]
    chunks: list[dict[str, Any]] = []
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", path, json=stream) as response:
        assert response.status_code == 200
        events = [event async for event in sse_events(response)]
    assert events[-1] == b"data: [DONE]"
    for event in events:
        chunk = event_json(event)
        if chunk is not None:
            chunks.append(chunk)
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
    return whole, [c["choices"][0] for c in chunks[:-1]]


def _ending(streamed: list[dict[str, Any]]) -> dict[str, Any]:
    """The streamed choice with the ``finish_reason``, which must be the last; no other
    streamed choice has a ``stop_reason``."""
    *before, last = streamed
    assert all(c["finish_reason"] is None and "stop_reason" not in c for c in before), before
    assert last["finish_reason"] is not None
    return last


def _text(streamed: list[dict[str, Any]]) -> str:
    return "".join(chunk_text({"choices": [choice]}) for choice in streamed)


async def _direct(reference: llama_cpp.Llama, body: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python's own whole answer's choice, from an empty cache."""

    def call() -> Any:
        reference.reset()
        if "messages" in body:
            options = {k: v for k, v in body.items() if k != "messages"}
            return reference.create_chat_completion(
                messages=fold_system(body["messages"]), temperature=0, **options
            )
        options = {k: v for k, v in body.items() if k != "prompt"}
        return reference.create_completion(prompt=body["prompt"], temperature=0, **options)

    answer = await trio.to_thread.run_sync(call)
    choice: dict[str, Any] = answer["choices"][0]
    return choice


async def test_end_of_generation_and_length_say_null_though_stop_strings_were_asked(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """Unhappy paths first: llama-cpp-python's "stop" for its end-of-generation token is not
    a stop string, and neither is a length cut."""
    gw = await start_local()
    eos = {str(reference.token_eos()): 100}  # sampled first: an empty answer
    ended = {"messages": MESSAGES, "max_tokens": 8, "logit_bias": eos, "stop": [UNSEEN]}
    capped = {"prompt": PROMPT, "max_tokens": 3, "stop": [UNSEEN, " 7"]}
    async with gw.client() as client:
        for body, finish in ((ended, "stop"), (capped, "length")):
            whole, streamed = await _answers(client, body)
            end = _ending(streamed)
            assert (whole["finish_reason"], end["finish_reason"]) == (finish, finish), body
            assert whole["stop_reason"] is None and end["stop_reason"] is None, body
            assert "stop_reason" in whole and "stop_reason" in end  # null, as vLLM says it
            direct = await _direct(reference, body)
            assert choice_text(whole) == _text(streamed) == choice_text(direct)


async def test_a_request_without_stop_strings_gets_llama_cpp_pythons_answer_as_it_is(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    eos = {str(reference.token_eos()): 100}
    async with gw.client() as client:
        for body in (
            {"prompt": PROMPT, "max_tokens": 3},
            {"messages": MESSAGES, "max_tokens": 8, "logit_bias": eos},
        ):
            whole, streamed = await _answers(client, body)
            assert whole == await _direct(reference, body)
            assert "stop_reason" not in _ending(streamed)


async def test_a_completion_names_the_stop_string_that_ended_it(start_local: StartLocal) -> None:
    gw = await start_local()
    async with gw.client() as client:
        whole, streamed = await _answers(
            client, {"prompt": PROMPT, "max_tokens": 30, "stop": [UNSEEN, " 7", "9"]}
        )
    end = _ending(streamed)
    assert whole["text"] == _text(streamed) == " 5, 6,"
    assert (whole["finish_reason"], whole["stop_reason"]) == ("stop", " 7")
    assert (end["finish_reason"], end["stop_reason"]) == ("stop", " 7")


async def test_two_stop_strings_completed_by_one_token_each_answer_names_its_own(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    """The token "," completes both "," and " 5,": llama-cpp-python cuts a whole answer at
    the first listed (" 5" is left) and a stream at the first in the text (nothing is
    left). Each names the string where its text was cut."""
    gw = await start_local()
    body = {"prompt": PROMPT, "max_tokens": 30, "stop": [",", " 5,"]}
    direct = await _direct(reference, body)
    async with gw.client() as client:
        whole, streamed = await _answers(client, body)
    assert whole["text"] == direct["text"] == " 5"
    assert whole["stop_reason"] == ","
    end = _ending(streamed)
    assert _text(streamed) == ""
    assert (end["finish_reason"], end["stop_reason"]) == ("stop", " 5,")


async def test_a_chat_names_the_stop_string_that_ended_it(
    start_local: StartLocal, reference: llama_cpp.Llama
) -> None:
    gw = await start_local()
    full = choice_text(await _direct(reference, {"messages": MESSAGES, "max_tokens": 16}))
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[1]  # as the model writes it, so it ends the answer
    body = {"messages": MESSAGES, "max_tokens": 16, "stop": [UNSEEN, stop]}
    direct = await _direct(reference, body)
    async with gw.client() as client:
        whole, streamed = await _answers(client, body)
    assert direct["finish_reason"] == "stop" and full.startswith(choice_text(direct))
    assert choice_text(whole) == _text(streamed) == choice_text(direct)
    end = _ending(streamed)
    assert (whole["finish_reason"], whole["stop_reason"]) == ("stop", stop)
    assert (end["finish_reason"], end["stop_reason"]) == ("stop", stop)
    assert end["delta"] == {}
