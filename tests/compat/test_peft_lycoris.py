"""peft's LoHa and LoKr files: ``save_pretrained`` from a peft model loads into adapterhub with peft's outputs, and
adapterhub writes LoHa / LoKr (by spec point or by module name) back in peft's layout, which peft loads with our
outputs. Options adapterhub cannot hold are refused by name."""

from __future__ import annotations

import json

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from method_checks import check_cp_cores, load_peft_lycoris, randomize_peft_params
from tiny_models import build, make_inputs

peft = pytest.importorskip("peft", reason="peft is not installed")

CASES = [
    ("loha", {}),
    ("lokr", {}),
    ("lokr", {"decompose_both": True, "decompose_factor": 4, "rank_dropout_scale": True}),
    (
        "loha",
        {"rank_pattern": {"value|v_proj": 3}, "alpha_pattern": {"query|q_proj": 6}, "rank_dropout": 0.1},
    ),
]


def _peft_model(arch: str, kind: str, method: str, **options):
    targets = ["query", "value", "dense"] if arch == "bert" else ["q_proj", "v_proj", "down_proj"]
    config_cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    config = config_cls(r=2, alpha=4, target_modules=targets, **options)
    model = peft.get_peft_model(build(arch, kind), config).eval()
    randomize_peft_params(model, (".hada_", ".lokr_", "modules_to_save"))
    return model


def _out(model, inputs):
    with torch.no_grad():
        output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize(("method", "options"), CASES)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_file_loads_with_peft_outputs_and_writes_back(arch, method, options, tmp_path):
    theirs = _peft_model(arch, "base", method, **options)
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    expected = _out(theirs, inputs)
    ours = adapterhub.init(build(arch))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    ours.eval()
    assert ours.adapters["p"].method == method
    torch.testing.assert_close(_out(ours, inputs), expected, atol=1e-5, rtol=0)
    # written back in peft's layout: peft loads it with the same outputs
    ours.save_adapter(tmp_path / "back", "p", layout="peft")
    meta = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert meta["peft_type"] == method.upper()
    again = peft.PeftModel.from_pretrained(build(arch), tmp_path / "back").eval()
    torch.testing.assert_close(_out(again, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_ours_by_spec_point_written_as_peft_loads_identically(method, tmp_path):
    ours = adapterhub.init(build("bert"))
    ours.add_adapter(
        "a", config=f"{method}[r=2,alpha=3,targets=[q,v,ffn_out],leave_out=[0]]", set_active=True
    )
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in ours._adapterhub.adapters["a"].parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    ours.eval()
    inputs = make_inputs()
    ours.save_adapter(tmp_path / "x", "a", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert all(".layer.1." in path for path in meta["target_modules"])
    theirs = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "x").eval()
    torch.testing.assert_close(_out(theirs, inputs), _out(ours, inputs), atol=1e-5, rtol=0)
    back = adapterhub.init(build("bert"))
    back.load_adapter(tmp_path / "x", load_as="x", set_active=True)
    torch.testing.assert_close(_out(back.eval(), inputs), _out(ours, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_modules_to_save_travel_with_the_adapter(method, tmp_path):
    theirs = _peft_model("bert", "classification", method, modules_to_save=["classifier"])
    theirs.save_pretrained(tmp_path / "p")
    inputs = make_inputs()
    ours = adapterhub.init(build("bert", "classification"))
    base = _out(ours, inputs)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours.adapters["p"].modules_to_save == ("classifier",)
    torch.testing.assert_close(_out(ours.eval(), inputs), _out(theirs, inputs), atol=1e-5, rtol=0)
    ours.set_active_adapters(None)
    assert torch.equal(_out(ours, inputs), base)


def test_gpt2_fused_projection_and_unknown_options_are_refused(tmp_path):
    ours = adapterhub.init(build("gpt2"))
    ours.add_adapter("a", config="loha[r=2,targets=[q,v]]")
    with pytest.raises(ConfigError, match=r"fused projection.*no peft form"):
        ours.save_adapter(tmp_path / "x", "a", layout="peft")
    theirs = _peft_model("bert", "base", "lokr")
    theirs.save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "adapter_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "some_future_option": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"some_future_option"):
        adapterhub.init(build("bert")).load_adapter(tmp_path / "p")
    path.write_text(json.dumps({**meta, "peft_type": "HRA"}))
    with pytest.raises(ConfigError, match=r"'HRA'.*LoHa \('LOHA'\).*LN tuning \('LN_TUNING'\)"):
        adapterhub.init(build("bert")).load_adapter(tmp_path / "p")


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2)
        self.conv3 = torch.nn.Conv2d(8, 6, 1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(self.pool(h).flatten(1))


def _cnn() -> CNN:
    torch.manual_seed(0)
    return CNN().eval()


@pytest.mark.parametrize(
    ("method", "options"),
    [("loha", {"r": 2}), ("lokr", {"r": 1}), ("lokr", {"r": 2}), ("lokr", {"r": 1, "decompose_both": True})],
)
def test_conv2d_matches_peft_merges_and_writes_back(method, options, tmp_path):
    config_cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    theirs = peft.get_peft_model(
        _cnn(), config_cls(alpha=3, target_modules=["conv1", "conv2", "fc"], **options)
    )
    theirs.eval()
    randomize_peft_params(theirs, (".hada_", ".lokr_"))
    images = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = theirs(images)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_cnn())
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    shapes = {n: tuple(p.shape) for n, p in ours._adapterhub.adapters["p"].named_parameters()}
    if method == "lokr" and options == {"r": 2}:  # r >= max(b, d) / 2: W2 full, holding the kernel
        assert shapes["by_name.conv1.lokr_w2"] == (4, 3, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(images), expected, atol=1e-5, rtol=0)
        ours.merge_adapter("p")
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=0)
    ours.unmerge_adapter()
    fresh = adapterhub.init(_cnn())
    fresh.add_adapter("t", config={"method": method, "target_modules": ["conv1", "conv2"], **options})
    fresh.train_adapter("t")
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=0.1).zero_grad()
    fresh.train()
    fresh(images).sum().backward()
    changed = {n for n, p in fresh.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert changed and all(n.startswith("_adapterhub.adapters.t.") for n in changed)
    assert all(p.grad is None for n, p in fresh.named_parameters() if n in before and "_adapterhub" not in n)


EFFECTIVE = [
    ("loha", {"r": 2}),
    ("lokr", {"r": 1}),  # r < max(b, d) / 2: W2 CP-decomposed on the 3×3 kernels
    ("lokr", {"r": 2}),  # r >= max(b, d) / 2 on every convolution: W2 full (b, d, kh, kw), no CP
    ("lokr", {"r": 1, "decompose_both": True, "init_weights": False}),
]


def _peft_cnn(method: str, options: dict, targets: list[str]):
    config_cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    theirs = peft.get_peft_model(_cnn(), config_cls(alpha=3, target_modules=targets, **options)).eval()
    randomize_peft_params(theirs, (".hada_", ".lokr_"))
    return theirs


@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize(("method", "options"), EFFECTIVE)
def test_effective_conv2d_matches_peft_both_ways_and_merges(method, options, effective, tmp_path):
    """use_effective_conv2d: peft's CP-decomposed kernels (hada_t1 / hada_t2, lokr_t2) on the 3×3 convolutions, the
    flattened kernel on the 1×1 one (peft turns it off there); peft's folder loads with its outputs, ours loads in
    peft with the same outputs, merge / unmerge keep them."""
    options = {**options, "use_effective_conv2d": effective}
    targets = ["conv1", "conv2", "conv3", "fc"]
    theirs = _peft_cnn(method, options, targets)
    check_cp_cores(theirs, method, options, effective)
    images = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = theirs(images)
    ours = adapterhub.init(_cnn())
    shapes = load_peft_lycoris(ours, theirs, tmp_path / "p")
    if effective and method == "loha":
        assert shapes["by_name.conv2.hada_t1"] == (2, 2, 3, 3) and shapes["by_name.conv3.hada_w1_a"] == (6, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["use_effective_conv2d"] is effective
    back = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(images), expected, atol=1e-5, rtol=0)
        base = _cnn()(images)
        ours.merge_adapter("p")
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=0)
        ours.unmerge_adapter()
        torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=0)
        ours.set_active_adapters(None)
        torch.testing.assert_close(ours(images), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("method", "options"), EFFECTIVE[:2])
def test_effective_conv2d_adapter_of_ours_trains_and_round_trips(method, options, tmp_path):
    """A new effective-conv adapter starts as the identity (peft's init), trains only its factors (the CP cores
    included), and its own layout and peft's reload with identical outputs."""
    ours = adapterhub.init(_cnn())
    images = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = ours(images)
    config = {"method": method, "target_modules": ["conv1", "conv2"], "use_effective_conv2d": True, **options}
    ours.add_adapter("t", config=config, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), base, atol=0, rtol=0)
    ours.train_adapter("t")
    ours.train()

    def grads() -> set[str]:
        ours.zero_grad(set_to_none=True)
        ours(images).sum().backward()
        found = {n for n, p in ours.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert all(n.startswith("_adapterhub.adapters.t.") for n in found)
        return {n.rsplit(".", 1)[-1] for n in found}

    # at the identity only the zero factor has a gradient (W2b of LoHa, W1 of LoKr); once moved, the cores too
    assert grads() == ({"hada_w2_b"} if method == "loha" else {"lokr_w1"})
    with torch.no_grad():
        for param in ours._adapterhub.adapters["t"].parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(4)) * 0.2)
    assert ({"hada_t1", "hada_t2"} if method == "loha" else {"lokr_t2"}) <= grads()
    ours.eval()
    with torch.no_grad():
        expected = ours(images)
    for layout in ("adapterhub", "peft"):
        directory = ours.save_adapter(tmp_path / layout, "t", layout=layout)
        again = adapterhub.init(_cnn())
        again.load_adapter(directory, load_as="t", set_active=True)
        with torch.no_grad():
            torch.testing.assert_close(again.eval()(images), expected, atol=1e-6, rtol=0)
    theirs = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_effective_conv2d_dropouts_match_peft_in_training(method, tmp_path):
    """rank_dropout (rows of the CP-built ΔW) and module_dropout draw as peft does: the same random stream gives the
    same training outputs."""
    options = {"r": 1 if method == "lokr" else 2, "use_effective_conv2d": True, "rank_dropout": 0.5}
    options["module_dropout"] = 0.3
    if method == "lokr":
        options["rank_dropout_scale"] = True
    theirs = _peft_cnn(method, options, ["conv1", "conv2", "conv3"])
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_cnn())
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    images = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    theirs.train()
    ours.train()
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        expected = theirs(images)
        torch.manual_seed(seed)
        outputs.append(ours(images))
        torch.testing.assert_close(outputs[-1], expected, atol=1e-5, rtol=0)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])  # the draws change the outputs
