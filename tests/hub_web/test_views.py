"""The website's pure helpers: snippet, heatmap, formatting, suggestion links."""

from __future__ import annotations

import ast

from adapterhub.hub.web import views
from adapterhub.hub.web.routes import candidate_url


def test_snippet_is_valid_python_for_any_model_name() -> None:
    for model in ("bert-base-uncased", 'evil") ; import os ; ("', "naïve/模型", ""):
        code = views.load_snippet("sentiment/sst-2@ukp", model, "http://hub.example:9000/", has_head=True)
        tree = ast.parse(code)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        from_pretrained = next(c for c in calls if getattr(c.func, "attr", "") == "from_pretrained")
        assert from_pretrained.args[0].value == (model or "bert-base-uncased")  # type: ignore[attr-defined]
        load = next(c for c in calls if getattr(c.func, "attr", "") == "load_adapter")
        assert load.args[0].value == "sentiment/sst-2@ukp"  # type: ignore[attr-defined]
        assert {k.arg: k.value.value for k in load.keywords} == {  # type: ignore[attr-defined]
            "set_active": True,
            "hub_url": "http://hub.example:9000",
        }


def test_snippet_leaves_out_the_default_hub() -> None:
    code = views.load_snippet("sst-2", "bert-base-uncased", views.DEFAULT_HUB_URL + "/")
    assert "hub_url" not in code
    assert views.cli_snippet("sst-2", views.DEFAULT_HUB_URL) == "adapterhub info sst-2"
    assert views.cli_snippet("sst-2", "http://x:1").startswith("ADAPTERHUB_HUB_URL=http://x:1 ")


def test_heatmap_from_metrics() -> None:
    metrics = {
        "accuracy": 0.7,
        "fusion/10/@a/x": 0.2,
        "fusion/2/@a/x": 0.9,
        "fusion/2/sst-2@ukp": 0.1,
        "fusion/bad": 1.0,  # no adapter part: ignored
        "fusion//x": 1.0,  # no layer: ignored
    }
    hm = views.heatmap_from_metrics(metrics)
    assert hm is not None
    assert hm.layers == ["2", "10"]  # numeric order
    assert hm.adapters == ["@a/x", "sst-2@ukp"]
    assert hm.weights == [[0.9, 0.1], [0.2, None]]
    assert len(hm.cells) == 3  # the missing one is not drawn
    darkest = max(hm.cells, key=lambda c: c.value)
    assert darkest.fill == views.colour(1.0) and darkest.text_fill == "#fff"
    assert views.heatmap_from_metrics({"accuracy": 1.0}) is None
    assert views.plain_metrics(metrics) == {"accuracy": 0.7}
    assert views.is_fusion("bottleneck", metrics)
    assert not views.is_fusion("bottleneck", {"accuracy": 1.0})
    assert views.is_fusion("fusion", {})


def test_heatmap_from_dict_and_fallback_to_config() -> None:
    data = {"adapters": ["a", "b"], "layers": [0, 1, 2], "weights": [[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]}
    hm = views.fusion_heatmap({}, {"fusion_activations": data})
    assert hm is not None and hm.layers == ["0", "1", "2"] and hm.vmax == 0.9
    assert views.heatmap_from_dict({"adapters": ["a"], "weights": [[1, 2]]}) is None  # ragged
    assert views.heatmap_from_dict({"adapters": [], "weights": []}) is None
    assert views.heatmap_from_dict("nope") is None
    g = hm.svg_geometry()
    assert g["width"] > g["label_w"] + 2 * g["cell_w"] and g["height"] > g["header_h"] + 3 * g["cell_h"]


def test_colour_ramp() -> None:
    assert views.colour(0) == "#f7fbff"
    assert views.colour(1) == "#08306b"
    assert views.colour(-5) == views.colour(0) and views.colour(7) == views.colour(1)


def test_formatting() -> None:
    assert views.human_size(512) == "512 B"
    assert views.human_size(6 * 1024) == "6.0 KB"
    assert views.human_size(3 * 1024 * 1024) == "3.0 MB"
    assert views.human_count(1234) == "1,234"
    assert views.human_count(25_000) == "25k"
    assert views.format_metric(0.912345) == "0.9123"
    assert views.format_metric(3.0) == "3"
    assert views.format_metric(float("nan")) == "nan"


def test_candidate_urls() -> None:
    assert candidate_url("@ukp/sst2:3") == "/adapters/ukp/sst2"
    assert candidate_url("@ukp") == "/owners/ukp"
    assert candidate_url("sentiment/sst-2") == "/explore/tasks/sentiment/sst-2"
    assert candidate_url("sentiment") == "/search?q=sentiment"
    assert candidate_url("<script>") is None


def test_library_fusion_activations_round_trip_through_card_metrics() -> None:
    np = __import__("numpy")
    from adapterhub.runtime.fusion import FusionActivations

    acts = FusionActivations(
        fusion="sst,mnli",
        adapters=("sst", "mnli"),
        rows=("0/attn", "0/ffn", "1/ffn", "10/ffn", "2/ffn"),
        weights=np.array([[0.5, 0.5], [0.7, 0.3], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6]]),
        tokens=12,
    )
    metrics = views.fusion_card_metrics(acts.to_dict())
    assert metrics["fusion/0:attn/sst"] == 0.5 and len(metrics) == 10
    assert all(len(k) <= 64 for k in metrics)  # the card's limit on metric names
    hm = views.heatmap_from_metrics(metrics)
    assert hm is not None
    assert hm.layers == ["0/attn", "0/ffn", "1/ffn", "2/ffn", "10/ffn"]
    assert hm.weights[-1] == [0.9, 0.1]
    direct = views.heatmap_from_dict(acts.to_dict())
    assert direct is not None and direct.layers == list(acts.rows) and direct.adapters == ["sst", "mnli"]
