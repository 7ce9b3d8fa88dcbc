"""Request parsing and validation, sans I/O."""

from __future__ import annotations

import json
import re

import pytest

from gateway.errors import InvalidRequest, MalformedJSON, MissingField
from gateway.inbound import (
    _TRACEPARENT,
    REQUEST_ID,
    ask_for_usage,
    endpoint_label,
    parse_json_object,
    request_ids,
    traceparent,
    validate,
)

VALID_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    with pytest.raises(MalformedJSON):
        parse_json_object(b"{nope")
    with pytest.raises(MalformedJSON):
        parse_json_object(b"\xff\xfe")
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_json_object(b"[1, 2]")
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(MalformedJSON, match="not a JSON value"):
            parse_json_object(b'{"model": "m", "temperature": %s}' % constant)


@pytest.mark.parametrize(
    ("body", "endpoint", "error", "param"),
    [
        ({"messages": []}, "chat/completions", MissingField, "model"),
        ({"model": "", "messages": []}, "chat/completions", InvalidRequest, "model"),
        ({"model": 3, "messages": []}, "chat/completions", InvalidRequest, "model"),
        (
            {"model": "m", "messages": [], "stream": "yes"},
            "chat/completions",
            InvalidRequest,
            "stream",
        ),
        ({"model": "m"}, "chat/completions", MissingField, "messages"),
        ({"model": "m"}, "completions", MissingField, "prompt"),
        ({"model": "m", "input": "x", "stream": True}, "embeddings", InvalidRequest, "stream"),
        (
            {"model": "m", "messages": [], "stream": True, "stream_options": "x"},
            "chat/completions",
            InvalidRequest,
            "stream_options",
        ),
    ],
)
def test_validate_refuses(body, endpoint, error, param) -> None:
    with pytest.raises(error) as caught:
        validate(body, endpoint)
    assert caught.value.param == param


def test_validate_accepts() -> None:
    assert validate({"model": "m", "messages": [], "stream": None}, "chat/completions") == (
        "m",
        False,
    )
    assert validate({"model": "m", "prompt": "p", "stream": True}, "completions") == ("m", True)
    options = {"model": "m", "messages": [], "stream": True, "stream_options": None}
    assert validate(options, "chat/completions") == ("m", True)


def test_traceparent_kept_when_valid_else_minted() -> None:
    assert traceparent(VALID_TP, "r") == VALID_TP
    minted = traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01", "f" * 32)
    assert minted.startswith("00-" + "f" * 32 + "-") and minted != VALID_TP
    assert len(traceparent("garbage", "not-hex").split("-")[1]) == 32
    # A request id of 32 zeros is a fine request id but no trace id (W3C forbids it).
    assert _TRACEPARENT.fullmatch(traceparent("garbage", "0" * 32))


def test_request_ids_keep_sane_ones_and_mint_the_rest() -> None:
    assert request_ids("abc-123", VALID_TP) == ("abc-123", VALID_TP)
    minted, trace = request_ids("bad id", "garbage")
    assert re.fullmatch(r"[0-9a-f]{32}", minted)
    assert trace.split("-")[1] == minted  # the trace id is the minted request id
    assert _TRACEPARENT.fullmatch(trace)  # valid as W3C: a span id, no all-zero ids
    assert len({request_ids("", "")[0] for _ in range(100)}) == 100


def test_request_id_pattern_and_labels_are_bounded() -> None:
    assert REQUEST_ID.fullmatch("abc-123:x.y_z")
    assert not REQUEST_ID.fullmatch("bad id") and not REQUEST_ID.fullmatch("x" * 129)
    assert endpoint_label("/v1/models/anything/at/all") == "models"
    assert endpoint_label("/random/path/12345") == "other"


def test_ask_for_usage_hides_only_what_the_client_did_not_ask_for() -> None:
    body, hide = ask_for_usage({"model": "m"})
    assert body["stream_options"] == {"include_usage": True} and hide
    body, hide = ask_for_usage({"model": "m", "stream_options": {"include_usage": True, "x": 1}})
    assert body["stream_options"] == {"include_usage": True, "x": 1} and not hide


@pytest.mark.parametrize(
    "raw",
    [
        '{"a": "\\ud83d\\ude00"}',  # a surrogate pair is one character: fine
        '{"a": [' + "[" * 126 + "]" * 126 + "]}",  # 128 levels deep
        '{"a": 1.5e308, "b": -2e-308}',
    ],
)
def test_json_that_can_be_sent_on_is_accepted(raw: str) -> None:
    body = parse_json_object(raw.encode())
    assert json.loads(json.dumps(body, ensure_ascii=False).encode("utf-8")) == body
    assert parse_json_object(raw) == body  # the same from a str


@pytest.mark.parametrize(
    "raw,says",
    [
        ('{"a": 1e999}', "out of range"),
        ('{"a": [-1E400]}', "out of range"),
        ('{"a": "x\\uDBFFy"}', "surrogate"),
        ('{"\\ud800": 1}', "surrogate"),
        ('{"a": [' + "[" * 127 + "]" * 127 + "]}", "nested deeper than 128"),
        ('{"a": ' + '{"b": ' * 50_000 + "1" + "}" * 50_000 + "}", "nested deeper than 128"),
    ],
)
def test_json_that_cannot_be_sent_on_is_malformed(raw: str, says: str) -> None:
    with pytest.raises(MalformedJSON, match=says):
        parse_json_object(raw.encode())


@pytest.mark.parametrize(
    "raw,says",
    [
        # a surrogate encoded as UTF-8 bytes: json.loads lets it through ("surrogatepass")
        (b'{"a": "x\xed\xa0\x80y"}', "can't decode"),
        (b'{"\xed\xb0\x80": 1}', "can't decode"),
        # the escape in a UTF-16 body, whose bytes hold no ASCII "\ud8"
        ('{"a": "\\ud800"}'.encode("utf-16-le"), "surrogate"),
        ('{"a": "x"}'.encode("utf-16-le")[:-2] + b"\x00\xd8}\x00", "can't decode"),
        (b'{"a": ' + b"9" * 5000 + b"}", "a number has too many digits"),
    ],
)
def test_bytes_that_are_no_text_or_no_sendable_number_are_malformed(raw: bytes, says: str) -> None:
    with pytest.raises(MalformedJSON, match=says):
        parse_json_object(raw)
    with pytest.raises(MalformedJSON, match=r"^The message "):
        parse_json_object(raw, "The message")
