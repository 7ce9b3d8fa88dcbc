"""One ``/metrics`` for every worker: expositions (as each process's registry writes them)
merged, and the merge read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics_merge import add_cumulative, merge_expositions

WORKER_0 = """\
# HELP gateway_requests_total Requests answered.
# TYPE gateway_requests_total counter
gateway_requests_total{route="chat",status="200"} 3.0
gateway_requests_total{route="chat",status="429"} 1.0
# HELP gateway_first_byte_seconds Time to the first byte.
# TYPE gateway_first_byte_seconds histogram
gateway_first_byte_seconds_bucket{route="chat",le="0.1"} 1.0
gateway_first_byte_seconds_bucket{route="chat",le="1.0"} 3.0
gateway_first_byte_seconds_bucket{route="chat",le="+Inf"} 4.0
gateway_first_byte_seconds_count{route="chat"} 4.0
gateway_first_byte_seconds_sum{route="chat"} 2.5
# HELP gateway_streams_active Streams open now.
# TYPE gateway_streams_active gauge
gateway_streams_active{route="chat"} 2.0
"""

WORKER_1 = """\
# HELP gateway_requests_total Requests answered.
# TYPE gateway_requests_total counter
gateway_requests_total{route="chat",status="200"} 5.0
gateway_requests_total{route="chat",status="500"} 2.0
# HELP gateway_first_byte_seconds Time to the first byte.
# TYPE gateway_first_byte_seconds histogram
gateway_first_byte_seconds_bucket{route="chat",le="0.1"} 0.0
gateway_first_byte_seconds_bucket{route="chat",le="1.0"} 1.0
gateway_first_byte_seconds_bucket{route="chat",le="+Inf"} 2.0
gateway_first_byte_seconds_count{route="chat"} 2.0
gateway_first_byte_seconds_sum{route="chat"} 4.25
gateway_first_byte_seconds_bucket{route="embed",le="0.1"} 1.0
gateway_first_byte_seconds_bucket{route="embed",le="1.0"} 1.0
gateway_first_byte_seconds_bucket{route="embed",le="+Inf"} 1.0
gateway_first_byte_seconds_count{route="embed"} 1.0
gateway_first_byte_seconds_sum{route="embed"} 0.05
# HELP gateway_streams_active Streams open now.
# TYPE gateway_streams_active gauge
gateway_streams_active{route="chat"} 0.0
"""

PARENT = """\
# HELP gateway_worker_restarts_total Workers restarted after dying.
# TYPE gateway_worker_restarts_total counter
gateway_worker_restarts_total 1.0
# HELP gateway_workers_running Worker processes running.
# TYPE gateway_workers_running gauge
gateway_workers_running 2.0
"""

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def merged(*reports: tuple[str, str]) -> tuple[dict[str, str], Series]:
    """The merge of ``reports`` as prometheus_client parses it: each family's type, and
    every sample's value by (name, labels)."""
    text = merge_expositions(reports).decode()
    types: dict[str, str] = {}
    series: Series = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"{family.name} written twice"
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"{key} written twice"
            series[key] = sample.value
    return types, series


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_counters_are_summed_per_label_set() -> None:
    types, series = merged(("0", WORKER_0), ("1", WORKER_1))
    assert types["gateway_requests"] == "counter"
    requests = {k: v for k, v in series.items() if k[0] == "gateway_requests_total"}
    assert requests == {
        ("gateway_requests_total", labels(route="chat", status="200")): 8.0,
        ("gateway_requests_total", labels(route="chat", status="429")): 1.0,  # worker 0's only
        ("gateway_requests_total", labels(route="chat", status="500")): 2.0,  # worker 1's only
    }


def test_histogram_buckets_sum_and_count_are_summed_per_label_set() -> None:
    types, series = merged(("0", WORKER_0), ("1", WORKER_1))
    assert types["gateway_first_byte_seconds"] == "histogram"
    name = "gateway_first_byte_seconds"
    chat = {
        le: series[(f"{name}_bucket", labels(le=le, route="chat"))] for le in ("0.1", "1.0", "+Inf")
    }
    assert chat == {"0.1": 1.0, "1.0": 4.0, "+Inf": 6.0}
    assert series[(f"{name}_count", labels(route="chat"))] == 6.0
    assert series[(f"{name}_sum", labels(route="chat"))] == 6.75
    assert series[(f"{name}_count", labels(route="embed"))] == 1.0  # worker 1's only
    assert series[(f"{name}_sum", labels(route="embed"))] == 0.05
    assert not any("worker" in dict(key[1]) for key in series if key[0].startswith(name))


def test_gauges_are_kept_per_worker_with_a_worker_label() -> None:
    types, series = merged(("0", WORKER_0), ("1", WORKER_1))
    assert types["gateway_streams_active"] == "gauge"
    streams = {k: v for k, v in series.items() if k[0] == "gateway_streams_active"}
    assert streams == {
        ("gateway_streams_active", labels(route="chat", worker="0")): 2.0,
        ("gateway_streams_active", labels(route="chat", worker="1")): 0.0,
    }


def test_the_parents_own_metrics_are_in_the_merge() -> None:
    types, series = merged(("parent", PARENT), ("0", WORKER_0), ("1", WORKER_1))
    assert types["gateway_worker_restarts"] == "counter"
    assert series[("gateway_worker_restarts_total", labels())] == 1.0
    assert series[("gateway_workers_running", labels(worker="parent"))] == 2.0
    assert series[("gateway_requests_total", labels(route="chat", status="200"))] == 8.0


def test_help_and_type_survive_the_merge() -> None:
    text = merge_expositions([("0", WORKER_0), ("1", WORKER_1)]).decode()
    assert "# HELP gateway_first_byte_seconds Time to the first byte." in text
    assert "# TYPE gateway_first_byte_seconds histogram" in text
    assert "# TYPE gateway_requests_total counter" in text
    assert "# TYPE gateway_streams_active gauge" in text


def test_one_worker_alone_comes_back_as_it_was_but_for_its_gauges_label() -> None:
    expected: Series = {}
    for family in text_string_to_metric_families(WORKER_0):
        for sample in family.samples:
            extra = {"worker": "0"} if family.type == "gauge" else {}
            expected[(sample.name, frozenset({**sample.labels, **extra}.items()))] = sample.value
    assert merged(("0", WORKER_0))[1] == expected
    assert merge_expositions([]) == b""


def test_a_retired_total_keeps_counters_and_histograms_but_no_gauges() -> None:
    """What the workers that are gone still add to every scrape (gateway.machine)."""
    live = merged(("0", WORKER_0), ("1", WORKER_1))[1]
    gauges = "gateway_streams_active"

    # Worker 0 gone: its counts still add to worker 1's, its gauge is no more.
    retired = add_cumulative("", WORKER_0)
    _, series = merged(("retired", retired), ("1", WORKER_1))
    assert series == {
        k: v for k, v in live.items() if k != (gauges, labels(route="chat", worker="0"))
    }

    # Both gone: the sum of their counters, histograms whole, and nothing else.
    types, series = merged(("retired", add_cumulative(retired, WORKER_1)))
    assert types == {"gateway_requests": "counter", "gateway_first_byte_seconds": "histogram"}
    assert series == {k: v for k, v in live.items() if k[0] != gauges}
