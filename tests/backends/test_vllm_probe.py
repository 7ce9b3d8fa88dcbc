"""The ``vllm`` backend's own parts, without a gateway: reading vLLM's ``/metrics`` (every
generation of its names), ``/v1/models``, its error bodies, and its settings. The fake it
talks to is :mod:`tests.fakes.vllm`; the gateway-level tests are in
``tests/e2e/test_vllm.py``."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import trio

from backends.vllm import Load, ServedModel, VLLMBackend, VLLMSettings, read_load
from backends.vllm._probe import read_models
from gateway.config import build_config
from gateway.errors import ConfigError, UpstreamStatusError
from gateway.registry import load_registry
from tests.e2e.vllm_gateway import wait_status
from tests.fakes.vllm import FakeVLLM
from tests.fakes.vllm_metrics import EngineLoad, exposition

KEY = "sk-vllm-probe-5151"
POLL = 0.2
MESSAGES = [{"role": "user", "content": "hello there"}]
COUNTERS = {"prompt": 0, "generation": 0, "stop": 0, "length": 0, "abort": 0}


# -- /metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,engines,expected",
    [
        ("v1", [EngineLoad(2, 1, 0.5)], Load(2, 1, 0.5)),
        ("v0.9", [EngineLoad(2, 1, 0.5)], Load(2, 1, 0.5)),  # both names: the new one wins
        ("v0", [EngineLoad(3, 0, 0.25)], Load(3, 0, 0.25)),  # gpu_cache_usage_perc only
        ("v1", [EngineLoad(1, 4, 0.2), EngineLoad(2, 0, 0.7)], Load(3, 4, 0.7)),
    ],
    ids=["kv_cache_usage_perc", "both-names", "gpu_cache_usage_perc", "data-parallel"],
)
def test_read_load_every_generation(
    version: Any, engines: list[EngineLoad], expected: Load
) -> None:
    """Requests are summed over data-parallel engines; the cache pressure is the fullest
    engine's, under whichever name the server uses."""
    assert read_load(exposition(version, "m", engines, COUNTERS).decode()) == expected


def test_read_load_prefers_the_current_cache_name() -> None:
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0"} 0.3\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0"} 0.6\n'
    )
    assert read_load(text).cache_usage == 0.6


def test_read_load_without_vllm_metrics_or_broken() -> None:
    assert read_load("# TYPE other gauge\nother 1.0\n") == Load() == read_load("")
    with pytest.raises(ValueError):
        read_load("vllm:num_requests_running{engine=0 3\n")


# -- /v1/models --------------------------------------------------------------------------


def test_read_models() -> None:
    doc = {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "max_model_len": 4096},
            {"id": "lora-b", "object": "model", "max_model_len": None, "parent": "a"},
        ],
    }
    assert read_models(doc) == (ServedModel("a", 4096), ServedModel("lora-b", None))
    bad: object
    for bad in ({"data": "x"}, [], {"data": [{"object": "model"}]}):
        with pytest.raises(TypeError):
            read_models(bad)


async def test_served_models_and_max_model_len(nursery: trio.Nursery) -> None:
    fake = FakeVLLM(api_key=KEY, served_model_name="qwen-0.5b", max_model_len=32768)
    await nursery.start(fake.serve)
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url=fake.url, api_key=KEY))
    async with backend.running():
        assert backend.status.health == "ready"  # the first status is there before serving
        assert backend.served_models == (ServedModel("qwen-0.5b", 32768),)
        assert backend.status.detail == "serving qwen-0.5b (max_model_len 32768)"
    [models] = [r for r in fake.requests if r.path == "/v1/models"]
    assert models.headers["authorization"] == f"Bearer {KEY}"


async def test_load_through_the_backend_every_generation(nursery: trio.Nursery) -> None:
    """Three requests on a data-parallel fake with one slot per engine, old metric names:
    the backend's status shows them within a polling interval."""
    fake = FakeVLLM(metrics_version="v0.9", engines=2, max_num_seqs=1, prefill=60)
    fake.kv_cache_usage = [0.2, 0.7]
    await nursery.start(fake.serve)
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url=fake.url, poll_interval=POLL))
    async with (
        backend.running(),
        httpx.AsyncClient(base_url=fake.url + "/v1") as client,
        trio.open_nursery() as clients,
    ):
        for _ in range(3):
            clients.start_soon(
                partial(client.post, "/chat/completions", json={"messages": MESSAGES}, timeout=None)
            )
        await fake.wait_until(lambda: fake.running() + fake.waiting() == 3)
        status = await wait_status(backend, lambda s: (s.running, s.queued) == (2, 1))
        assert status.cache_usage == 0.7
        clients.cancel_scope.cancel()


async def test_metrics_behind_a_redirect_are_read(nursery: trio.Nursery) -> None:
    fake = FakeVLLM()
    fake.metrics_fault, fake.kv_cache_usage = "redirect", 0.42
    await nursery.start(fake.serve)
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url=fake.url))
    async with backend.running():
        assert (backend.status.running, backend.status.cache_usage) == (0, 0.42)
    assert [r.status for r in fake.requests if r.path.startswith("/metrics")] == [307, 200]


async def test_unreachable_server_is_down_from_the_start() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the backend tries it
    backend = VLLMBackend("v", VLLMSettings(type="vllm", url=f"http://127.0.0.1:{port}"))
    async with backend.running():
        assert backend.status.health == "down"
        assert "ConnectError" in backend.status.detail
        assert backend.served_models is None


# -- error bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,status,message,type_,code",
    [
        (
            b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}',
            400,
            "bad",
            "BadRequestError",
            "400",
        ),
        (
            b'{"object":"error","message":"old","type":"NotFoundError","param":null,"code":404}',
            404,
            "old",
            "NotFoundError",
            "404",
        ),
        (
            (
                b'{"error":{"message":"too large","type":"BadRequestError","param":"max_tokens",'
                b'"code":400}}'
            ),
            400,
            "too large",
            "BadRequestError",
            "400",
        ),
        (b'{"error":"Unauthorized"}', 401, "Unauthorized", "invalid_request_error", None),
        (
            b'{"detail":"Not Found"}',
            404,
            'upstream returned HTTP 404: {"detail":"Not Found"}',
            "invalid_request_error",
            None,
        ),
    ],
    ids=["current", "v0.9-flat", "with-param", "auth-middleware", "fastapi-404"],
)
def test_from_body_maps_vllms_bodies(
    body: bytes, status: int, message: str, type_: str, code: str | None
) -> None:
    """Every body shape vLLM sends (see the fake's docstrings for where each comes from)."""
    error = UpstreamStatusError.from_body(status, body)
    assert (error.status, error.message, error.type, error.code) == (status, message, type_, code)
    assert error.param == ("max_tokens" if b'"param":"max_tokens"' in body else None)


# -- settings ----------------------------------------------------------------------------


def test_registered_as_vllm() -> None:
    registered = load_registry().get("vllm")
    assert registered is not None and registered.cls is VLLMBackend


@pytest.mark.parametrize(
    "table,message",
    [
        ({"poll_intervall": 1}, "backends.v.poll_intervall: unknown key"),
        ({"poll_interval": 0}, "backends.v.poll_interval: Input should be greater than 0"),
        ({"url": "ftp://host"}, "backends.v.url: Value error, 'ftp://host' is not an http(s) URL"),
        ({"timeouts": {"conect": 1}}, "backends.v.timeouts.conect: unknown key"),
    ],
)
def test_settings_errors_name_the_dotted_path(table: dict[str, Any], message: str) -> None:
    raw = {"backends": {"v": {"type": "vllm", "url": "http://h:8000", **table}}}
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert message in info.value.message


def test_settings_url_and_secret_key() -> None:
    config = build_config(
        {
            "backends": {
                "v": {
                    "type": "vllm",
                    "url": "http://gpu-box:8000/v1/",
                    "api_key": {"env": "VLLM_KEY"},
                }
            }
        },
        environ={"VLLM_KEY": KEY},
    )
    settings = config.backends["v"]
    assert isinstance(settings, VLLMSettings)
    assert settings.url == "http://gpu-box:8000"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)
    assert (settings.poll_interval, settings.poll_timeout) == (2.0, 5.0)
