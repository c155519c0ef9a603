"""LoHa and LoKr on nn.Conv1d selected by target_modules (peft 0.21's ``loha.Conv1d`` / ``lokr.Conv1d``): the
flattened kernel ``(c_out, c_in·k)``, LoKr's full ``lokr_w2 (b, d, k)`` (peft's Kronecker product of ``(a, c)``
with it, reshaped to ``(c_out, c_in, k)``), and with ``use_effective_conv2d`` (peft applies the flag to Conv1d too,
off for kernel 1) the CP cores ``(r, r, k, 1)``. On a small 1-D CNN (kernel 3, stride and padding, and a 1-wide
kernel): peft's outputs, peft's files both ways, merging, training, dropouts, and the files' own checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.errors import ConfigError
from method_checks import check_cp_cores, fit_mse, load_peft_lycoris, randomize_peft_params

peft = pytest.importorskip("peft", reason="peft is not installed")


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2, padding=1, bias=False)
        self.conv3 = nn.Conv1d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))  # (N, 6, L')
        return self.fc(h.mean(-1))


def _cnn() -> CNN1d:
    torch.manual_seed(0)
    return CNN1d().eval()


def _signal(seed: int = 3) -> torch.Tensor:
    return torch.randn(4, 4, 13, generator=torch.Generator().manual_seed(seed))


CASES = [
    ("loha", {"r": 2}),
    ("lokr", {"r": 1}),  # r < max(b, d) / 2: W2 factored (flattened c_in·k) or CP-decomposed
    ("lokr", {"r": 2}),  # r >= max(b, d) / 2 on every convolution: W2 full (b, d, k)
    ("lokr", {"r": 1, "decompose_both": True, "init_weights": False}),
]
TARGETS = ["conv1", "conv2", "conv3", "fc"]


@pytest.fixture(autouse=True)
def dense_cp_kernel(monkeypatch):
    """peft 0.21.2's LoKr builds a Conv1d's CP kernel ``(b, d, k, 1)`` by einsum with a stride on the size-1
    dimension that its ``torch.kron`` then fails to view (RuntimeError in every forward); the same values with
    canonical strides let peft compute its own math here (the values are untouched)."""
    from peft.tuners.lokr import layer

    original = layer.make_weight_cp
    probe = original(torch.ones(1, 1, 3, 1), torch.ones(1, 4), torch.ones(1, 2)).contiguous()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        torch.kron(torch.ones(2, 2, 1, 1), probe)  # the failure this works around (peft 0.21.2, torch 2.13)
    monkeypatch.setattr(
        layer, "make_weight_cp", lambda *a: original(*a).clone(memory_format=torch.contiguous_format)
    )


def _peft_cnn(method: str, options: dict, targets: list[str]):
    config_cls = peft.LoHaConfig if method == "loha" else peft.LoKrConfig
    theirs = peft.get_peft_model(_cnn(), config_cls(alpha=3, target_modules=targets, **options)).eval()
    randomize_peft_params(theirs, (".hada_", ".lokr_"))
    return theirs


@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize(("method", "options"), CASES)
def test_conv1d_matches_peft_both_ways_and_merges(method, options, effective, tmp_path):
    """peft's folder loads with its outputs (same factor shapes), ours loads in peft with the same outputs, merge /
    unmerge keep them, and with no adapter active the base model's come back."""
    options = {**options, "use_effective_conv2d": effective}
    theirs = _peft_cnn(method, options, TARGETS)
    check_cp_cores(theirs, method, options, effective)
    x = _signal()
    with torch.no_grad():
        expected = theirs(x)
    ours = adapterhub.init(_cnn())
    shapes = load_peft_lycoris(ours, theirs, tmp_path / "p")
    if effective and method == "loha":
        assert shapes["by_name.conv2.hada_t1"] == (2, 2, 3, 1) and shapes["by_name.conv3.hada_w1_a"] == (6, 2)
    if method == "lokr" and options["r"] == 2:
        assert shapes["by_name.conv1.lokr_w2"] == (4, 2, 3)
    if not effective and method == "loha":
        assert shapes["by_name.conv2.hada_w1_b"] == (2, 24)
    with torch.no_grad():
        adapted = ours(x)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    meta = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert meta["use_effective_conv2d"] is effective
    declared = json.loads((tmp_path / "x" / "adapterhub_conv_modules.json").read_text())["conv_modules"]
    assert declared["conv2"] == {"in_channels": 8, "kernel_size": [3]}
    back = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), expected, atol=1e-5, rtol=0)
        base = _cnn()(x)
        ours.merge_adapter("p")
        merged = ours(x)
        ours.unmerge_adapter()
        torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
        theirs.merge_adapter()
        ours.merge_adapter("p")
        for path in ("conv1", "conv2", "conv3"):  # the merged kernels equal peft's
            torch.testing.assert_close(
                ours.get_submodule(path).weight,
                theirs.base_model.model.get_submodule(path).base_layer.weight,
                atol=1e-6,
                rtol=0,
            )
        ours.unmerge_adapter()
        ours.set_active_adapters(None)
        torch.testing.assert_close(ours(x), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize(("method", "options"), CASES[:3])
def test_new_conv1d_adapter_trains_only_its_factors_and_round_trips(method, options, effective, tmp_path):
    """A new adapter starts as the identity (peft's init), training changes only its factors and lowers the loss,
    and both layouts reload with identical outputs (peft computes them from ours); the files declare each
    convolution's channels and kernel (``conv_modules``)."""
    ours = adapterhub.init(_cnn())
    x = _signal(1)
    with torch.no_grad():
        base = ours(x)
    config = {"method": method, "target_modules": TARGETS[:3], "use_effective_conv2d": effective, **options}
    ours.add_adapter("t", config=config, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), base, atol=0, rtol=0)
        for param in ours._adapterhub.adapters[
            "t"
        ].parameters():  # off the identity: every factor has a gradient
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    ours.train_adapter("t")
    ours.train()
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("_adapterhub.adapters.t.") for n in trainable)
    target = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    losses = fit_mse(ours, lambda: ours(x), target, 15)
    assert losses[-1] < losses[0]
    changed = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    ours.eval()
    with torch.no_grad():
        expected = ours(x)
    for layout in ("adapterhub", "peft"):
        directory = ours.save_adapter(tmp_path / layout, "t", layout=layout)
        again = adapterhub.init(_cnn())
        again.load_adapter(directory, load_as="t", set_active=True)
        with torch.no_grad():
            torch.testing.assert_close(again.eval()(x), expected, atol=1e-6, rtol=0)
    theirs = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), expected, atol=1e-5, rtol=0)
    meta = json.loads((tmp_path / "adapterhub" / "adapter_config.json").read_text())
    assert meta["conv_modules"] == {
        "conv1": {"in_channels": 4, "kernel_size": [3]},
        "conv2": {"in_channels": 8, "kernel_size": [3]},
        "conv3": {"in_channels": 8, "kernel_size": [1]},
    }


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_conv1d_dropouts_match_peft_in_training(method, tmp_path):
    """rank_dropout (rows of ΔW) and module_dropout draw as peft does on Conv1d: the same random stream gives the
    same training outputs."""
    options = {"r": 1 if method == "lokr" else 2, "use_effective_conv2d": True, "rank_dropout": 0.5}
    options["module_dropout"] = 0.3
    if method == "lokr":
        options["rank_dropout_scale"] = True
    theirs = _peft_cnn(method, options, TARGETS[:3])
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_cnn())
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    x = _signal(2)
    theirs.train()
    ours.train()
    outputs = []
    for seed in range(4):
        torch.manual_seed(seed)
        expected = theirs(x)
        torch.manual_seed(seed)
        outputs.append(ours(x))
        torch.testing.assert_close(outputs[-1], expected, atol=1e-5, rtol=0)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])  # the draws change the outputs


@pytest.mark.parametrize(
    ("conv", "what"),
    [
        (nn.Conv1d(4, 4, 3, dilation=2), r"dilation=\(2,\)"),
        (nn.Conv1d(4, 6, 3, groups=2), "groups=2"),
        (nn.Conv3d(2, 2, 3), r"nn\.Conv3d is not supported"),
    ],
)
@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_grouped_dilated_and_3d_convolutions_are_refused(method, conv, what):
    with pytest.raises(ConfigError, match=what):
        adapterhub.init(nn.Sequential(conv)).add_adapter("g", {"method": method, "target_modules": ["0"]})
