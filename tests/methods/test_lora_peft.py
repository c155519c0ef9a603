"""adapterhub's LoRA computes the same function as peft's LoRA (same r, alpha, targets, weights).

peft's layout: ``...encoder.layer.N.attention.self.{query,value}.lora_A.default.weight`` (r, d_in) and
``lora_B.default.weight`` (d_out, r), scaling ``alpha / r`` -- the same shapes and formula as adapterhub's
``LoRALayer``. Skipped when peft (a ``dev`` extra) is not installed.
"""

import re

import pytest
import torch

import adapterhub
from method_checks import copy_peft_classifier
from tiny_models import build, make_inputs

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

SITE = re.compile(r"layer\.(\d+)\.attention\.self\.(query|value)$")
POINT = {"query": "q", "value": "v"}


def peft_sites(model):
    return {
        (int(m.group(1)), POINT[m.group(2)]): module
        for name, module in model.named_modules()
        if (m := SITE.search(name)) and hasattr(module, "lora_A")
    }


@pytest.mark.parametrize(("r", "alpha"), [(8, 8), (4, 16)])
def test_lora_matches_peft_on_tiny_bert_classifier(r, alpha):
    theirs = peft.get_peft_model(
        build("bert", "classification"),
        peft.LoraConfig(
            task_type="SEQ_CLS", r=r, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0
        ),
    ).eval()
    ours = adapterhub.init(build("bert", "classification"))  # same seed: same base weights and classifier
    ours.add_adapter("x", config=f"lora[r={r},alpha={alpha},targets=[q,v]]", set_active=True)
    ours.eval()

    generator = torch.Generator().manual_seed(7)
    sites = peft_sites(theirs)
    assert len(sites) == 2 * 2  # 2 layers x (query, value)
    with torch.no_grad():
        for (layer, point), site in sites.items():
            a, b = site.lora_A["default"].weight, site.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=generator) * 0.3)  # B is zero at init: perturb both
            b.copy_(torch.randn(b.shape, generator=generator) * 0.3)
            mine = ours._adapterhub.adapters["x"].layer_at(layer, point)
            assert mine.lora_A.shape == a.shape and mine.lora_B.shape == b.shape
            assert mine.scaling == pytest.approx(site.scaling["default"])
            mine.lora_A.copy_(a)
            mine.lora_B.copy_(b)
        copy_peft_classifier(theirs, ours)

        inputs = make_inputs()
        expected = theirs(**inputs).logits
        got = ours(**inputs).logits
        base = build("bert", "classification")
        copy_peft_classifier(theirs, base)
        without = base(**inputs).logits
    assert (expected - without).abs().max() > 1e-3  # the LoRA update really changes the output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    ours.merge_adapter("x")  # merged: the same function within float rounding
    with torch.no_grad():
        merged = ours(**inputs).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
