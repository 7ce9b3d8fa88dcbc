"""The fake-vs-real comparator (:mod:`tests.fakes.vllm_diff`), with a second fake
standing in for the real server: it finds nothing between equals, and it finds each kind of
difference the gateway cares about when the "real" one behaves like another vLLM version."""

from __future__ import annotations

import pytest
import trio

from tests.fakes.vllm import FakeVLLM
from tests.fakes.vllm_diff import Difference, compare

KEY = "sk-diff-3131"


async def serve(nursery: trio.Nursery, **kwargs: object) -> FakeVLLM:
    fake = FakeVLLM(api_key=KEY, **kwargs)  # type: ignore[arg-type]
    await nursery.start(fake.serve)
    return fake


async def test_equal_servers_have_no_differences(nursery: trio.Nursery) -> None:
    real, fake = await serve(nursery), await serve(nursery)
    assert await compare(real.url, fake, api_key=KEY) == ([], [])
    assert len(real.requests) == len(fake.requests) == 16


async def test_legacy_error_bodies_and_old_metrics_are_reported(nursery: trio.Nursery) -> None:
    real = await serve(nursery, error_form="legacy", metrics_version="v0.9")
    fake = await serve(nursery)
    differences, real_only = await compare(real.url, fake, api_key=KEY)
    where = {(d.probe, d.where) for d in differences}
    assert ("unknown-model", "body.object") in where
    assert ("unknown-model", "body.error.message") in where
    assert ("max-tokens-too-large", "body.code") in where
    assert real_only == ["metric vllm:gpu_cache_usage_perc"]  # information, not a difference
    assert Difference("unknown-model", "body.object", "str", "(absent)") in differences


@pytest.mark.parametrize("version", ["v0"])
async def test_metric_labels_and_missing_families_are_reported(
    nursery: trio.Nursery, version: str
) -> None:
    real = await serve(nursery, metrics_version=version)
    fake = await serve(nursery)
    differences, _ = await compare(real.url, fake, api_key=KEY)
    metrics = {d.where: (d.real, d.fake) for d in differences if d.probe == "metrics"}
    assert metrics["metric vllm:num_requests_running"] == (
        "gauge model_name",
        "gauge engine,model_name",
    )
    assert metrics["metric vllm:kv_cache_usage_perc"] == ("(absent)", "gauge engine,model_name")


async def test_stream_shape_and_status_differences_are_reported(nursery: trio.Nursery) -> None:
    real = await serve(nursery, max_model_len=100_000_000)  # accepts the huge max_tokens
    real.fail_stream_after = 1  # every stream: one token, then vLLM's in-stream error event
    fake = await serve(nursery)
    differences, _ = await compare(real.url, fake, api_key=KEY)
    by_probe = {(d.probe, d.where): d for d in differences}
    assert str(by_probe[("max-tokens-too-large", "status")]) == (
        "max-tokens-too-large: status: real 200 | fake 400"
    )
    assert ("chat-stream", "last chunk.error.message") in by_probe
    assert ("chat-stream", "ends with [DONE]") not in by_probe  # both end with [DONE]
