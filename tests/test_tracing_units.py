"""``[tracing]`` as the config reads it (the standard OTEL_* variables included), the
bounded export queue, and the upstream's model as the dialects note it for spans."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.config import GatewayConfig, build_config
from gateway.dialects.base import Tokens
from gateway.dialects.chat import ChatPassthrough
from gateway.dialects.messages import MessagesPassthrough
from gateway.dialects.responses import ResponsesPassthrough
from gateway.errors import ConfigError
from gateway.testing.fake_openai import chat_events, messages_events, responses_events
from gateway.tracing import _Backlog, traces_url


def config(tracing: dict[str, Any] | None = None, **environ: str) -> GatewayConfig:
    raw: dict[str, Any] = {"tracing": tracing} if tracing is not None else {}
    return build_config(raw, environ=environ)


def test_tracing_is_off_unless_an_endpoint_is_given() -> None:
    settings = config().tracing
    assert not settings.enabled
    assert settings.service_name == "trio-gateway"
    assert not config({"sample_ratio": 0.5}).tracing.enabled


def test_the_standard_variables_fill_in_what_the_file_leaves_out() -> None:
    settings = config(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/", OTEL_SERVICE_NAME="edge"
    ).tracing
    assert settings.enabled
    assert settings.otlp_endpoint == "http://collector:4318"
    assert settings.service_name == "edge"
    # The file wins over the environment.
    given = config(
        {"otlp_endpoint": "https://traces.example:4318", "service_name": "gw"},
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
        OTEL_SERVICE_NAME="edge",
    ).tracing
    assert (given.otlp_endpoint, given.service_name) == ("https://traces.example:4318", "gw")


def test_header_values_are_secret_env_references() -> None:
    settings = config(
        {"otlp_endpoint": "http://c:4318", "headers": {"authorization": {"env": "TOKEN"}}},
        TOKEN="Bearer s3cret",
    ).tracing
    assert settings.headers["authorization"].get_secret_value() == "Bearer s3cret"
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError, match=r"tracing\.headers\.authorization: .*TOKEN is not set"):
        config({"otlp_endpoint": "http://c:4318", "headers": {"authorization": {"env": "TOKEN"}}})


@pytest.mark.parametrize(
    ("table", "environ", "error"),
    [
        ({"otlp_endpoint": "collector:4318"}, {}, r"tracing\.otlp_endpoint: .*not an http\(s\) URL"),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://c"}, r"OTEL_EXPORTER_OTLP_ENDPOINT: .*not an http"),
        ({"sample_ratio": 1.5}, {}, r"tracing\.sample_ratio: "),
        ({"schedule_delay": 0}, {}, r"tracing\.schedule_delay: "),
        ({"endpoint": "http://c"}, {}, r"tracing\.endpoint: unknown key"),
        ({"max_queue_size": 8, "max_export_batch_size": 9}, {}, r"tracing: .*must not exceed"),
    ],
)  # fmt: skip
def test_bad_tracing_settings_are_refused_with_their_path(
    table: dict[str, Any], environ: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        config(table, **environ)


def test_spans_go_to_the_collectors_traces_path() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/otlp/") == "http://c:4318/otlp/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_the_backlog_drops_and_counts_past_its_bound() -> None:
    registry = CollectorRegistry()
    backlog = _Backlog(2, Counter("dropped", "", ["reason"], registry=registry))

    def full() -> float | None:
        return registry.get_sample_value("dropped_total", {"reason": "queue_full"})

    assert [backlog.take() for _ in range(3)] == [True, True, False]
    assert full() == 1
    backlog.release(2)  # taken for export
    assert backlog.take()
    backlog.release(5)  # never below empty
    assert [backlog.take() for _ in range(3)] == [True, True, False]
    assert full() == 2


def test_every_dialect_notes_the_model_the_upstream_answered_with() -> None:
    pipe = ChatPassthrough().stream()
    pipe.feed(b"".join(chat_events(2, model="served-m")))
    assert pipe.tokens.model == "served-m"
    pipe = MessagesPassthrough().stream()
    pipe.feed(b"".join(messages_events(2, model="claude-ish")))
    assert (pipe.tokens.model, pipe.tokens.completion) == ("claude-ish", 2)
    pipe = ResponsesPassthrough().stream()
    pipe.feed(b"".join(responses_events(2, model="resp-m")))
    assert pipe.tokens.model == "resp-m"
    whole = Tokens()
    ChatPassthrough().whole(b'{"model": "w", "usage": {"prompt_tokens": 1}}', whole)
    assert (whole.model, whole.prompt) == ("w", 1)
