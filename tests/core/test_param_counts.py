"""Table 2 of the AdapterHub paper, by the formula 2md + d + m per adapter, reported by adapter_summary()."""

import pytest
import torch
import transformers

import adapterhub

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


def meta_bert(dims):
    with torch.device("meta"):
        model = transformers.BertModel(transformers.BertConfig(**dims))
    return adapterhub.init(model)


@pytest.mark.parametrize(
    "dims, factor, expected",
    [
        (BASE, 64, 230_544),
        (BASE, 16, 894_528),
        (BASE, 2, 7_091_712),
        (LARGE, 64, 811_392),
        (LARGE, 16, 3_171_840),
        (LARGE, 2, 25_202_688),
    ],
)
def test_pfeiffer_parameter_counts_match_table_2(dims, factor, expected):
    model = meta_bert(dims)
    model.add_adapter("p", config=f"pfeiffer[reduction_factor={factor}]")
    model.add_adapter("h", config=f"houlsby[reduction_factor={factor}]")
    summary = model.adapter_summary()
    d, layers = dims["hidden_size"], dims["num_hidden_layers"]
    m = d // factor
    assert summary["p"].parameters == layers * (2 * m * d + d + m) == expected
    assert summary["h"].parameters == 2 * expected  # Houlsby: two adapters per layer
    assert summary["p"].percent_of_base == pytest.approx(100 * expected / summary.base_parameters)


def test_per_layer_sizes_and_left_out_layers_change_the_count():
    model = meta_bert(BASE)
    model.add_adapter(
        "x", config={"method": "bottleneck", "reduction_factor": {"default": 16, "0": 2}, "leave_out": [11]}
    )
    d = 768
    per = lambda m: 2 * m * d + d + m  # noqa: E731
    assert model.adapter_summary()["x"].parameters == per(384) + 10 * per(48)
