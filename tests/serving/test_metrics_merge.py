"""``merge_expositions``: several servers' Prometheus texts as one, each family once, every sample labelled."""

from __future__ import annotations

from adapterhub.serving.metrics import Metrics
from adapterhub.serving.metrics_merge import merge_expositions

A = """# HELP x_total Things.
# TYPE x_total counter
x_total 3
# HELP lat_seconds Latency.
# TYPE lat_seconds histogram
lat_seconds_bucket{le="0.1"} 1
lat_seconds_bucket{le="+Inf"} 2
lat_seconds_sum 0.5
lat_seconds_count 2
"""
B = """# HELP x_total Things.
# TYPE x_total counter
x_total 4
# HELP only_b Only here.
# TYPE only_b gauge
only_b{model="m"} 1
"""


def test_families_once_samples_labelled_in_family_order():
    merged = merge_expositions({"r2": B, "r1": A})
    assert merged.splitlines() == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{replica="r1"} 3',
        'x_total{replica="r2"} 4',
        "# HELP lat_seconds Latency.",
        "# TYPE lat_seconds histogram",
        'lat_seconds_bucket{replica="r1",le="0.1"} 1',
        'lat_seconds_bucket{replica="r1",le="+Inf"} 2',
        'lat_seconds_sum{replica="r1"} 0.5',
        'lat_seconds_count{replica="r1"} 2',
        "# HELP only_b Only here.",
        "# TYPE only_b gauge",
        'only_b{replica="r2",model="m"} 1',
    ]
    assert merge_expositions({}) == ""


def test_merging_real_server_texts_keeps_every_sample():
    first, second = Metrics(), Metrics()
    first.request("/v1/predict", 200, 0.01)
    second.request("/v1/predict", 404, 0.02)
    texts = {"a": first.render(), "b": second.render()}
    merged = merge_expositions(texts, label="instance")
    samples = [line for line in merged.splitlines() if not line.startswith("#")]
    own = [line for text in texts.values() for line in text.splitlines() if line and not line.startswith("#")]
    assert len(samples) == len(own)
    assert 'adapterhub_requests_total{instance="a",endpoint="/v1/predict",status="200"} 1' in samples
    assert 'adapterhub_requests_total{instance="b",endpoint="/v1/predict",status="404"} 1' in samples
    types = [line for line in merged.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))  # each family once
