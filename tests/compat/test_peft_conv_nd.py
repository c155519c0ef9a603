"""LoRA (and rsLoRA) on nn.Conv1d and nn.Conv3d, and DoRA on Conv1d / Conv2d / Conv3d, selected by target_modules (peft's ``_ConvNd`` LoRA: ``lora_A`` with
the base's kernel, stride and padding, ``lora_B`` pointwise) on small CNNs without an ArchitectureSpec: outputs,
merging, peft's files both ways, training, and the convolutions refused by name."""

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.errors import ConfigError
from method_checks import fit_mse, randomize_peft_lora

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 5, stride=2, padding=2, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (N, 8, L')
        return self.fc(h.mean(-1))


class CNN3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 6, (3, 3, 2), padding=(1, 0, 1))
        self.conv2 = nn.Conv3d(6, 6, 3, stride=(2, 1, 2))
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (N, 6, D', H', W')
        return self.fc(h.mean((2, 3, 4)))


class CNN2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, (3, 1), stride=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (N, 8, H', W')
        return self.fc(h.mean((2, 3)))


CASES = {
    "conv1d": (CNN1d, (4, 3, 17)),
    "conv3d": (CNN3d, (2, 2, 7, 6, 7)),
}
DORA_CASES = {**CASES, "conv2d": (CNN2d, (3, 3, 9, 8))}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return DORA_CASES[kind][0]().eval()


def _inputs(kind: str) -> torch.Tensor:
    return torch.randn(*DORA_CASES[kind][1], generator=torch.Generator().manual_seed(3))


def _peft_model(kind: str, **options: object) -> nn.Module:
    theirs = peft.get_peft_model(
        _model(kind), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv1", "conv2"], **options)
    )
    randomize_peft_lora(theirs)
    return theirs.eval()


def _check_peft_files_and_merged(
    tmp_path, kind: str, theirs, ours, x: torch.Tensor, adapted: torch.Tensor
) -> None:
    """Ours (adapter ``p`` active, giving ``adapted`` on ``x``) written in peft's layout loads in peft with the same
    outputs; merged, the model's kernels equal peft's merged ones and the outputs stay."""
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(_model(kind), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), adapted, atol=1e-5, rtol=0)
    ours.merge_adapter("p")
    merged = theirs.merge_and_unload()
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(
            ours.get_submodule(name).weight, merged.get_submodule(name).weight, atol=1e-5, rtol=0
        )
    with torch.no_grad():
        torch.testing.assert_close(ours(x), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("rslora", [False, True])
def test_conv_nd_lora_matches_peft_both_ways_and_merges(tmp_path, kind, rslora):
    x = _inputs(kind)
    theirs = _peft_model(kind, use_rslora=rslora)
    with torch.no_grad():
        expected = theirs(x)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_model(kind))
    with torch.no_grad():
        plain = ours(x)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    lora = ours._adapterhub.adapters["p"].by_name["conv1"]
    spatial = len(CASES[kind][1]) - 2
    assert lora.lora_A.dim() == lora.lora_B.dim() == 2 + spatial
    assert tuple(lora.lora_B.shape[2:]) == (1,) * spatial
    with torch.no_grad():
        adapted = ours(x)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)

    _check_peft_files_and_merged(tmp_path, kind, theirs, ours, x, adapted)
    # unmerging restores the kernels
    ours.unmerge_adapter("p")
    torch.testing.assert_close(ours.conv1.weight, _model(kind).conv1.weight, atol=1e-6, rtol=0)

    # the native layout round trip
    ours.save_adapter(tmp_path / "n", "p")
    again = adapterhub.init(_model(kind))
    again.load_adapter(tmp_path / "n", load_as="p", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x), adapted, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(DORA_CASES))
def test_conv_dora_matches_peft_both_ways_merges_and_trains(tmp_path, kind):
    """DoRA on Conv1d / Conv2d / Conv3d (peft's _DoraConvNdLayer): the magnitude ``(1, c_out, 1, ...)`` per output
    channel, peft's outputs both ways, its merged kernels, and a new adapter's magnitude ``‖W‖`` per channel."""
    x = _inputs(kind)
    theirs = _peft_model(kind, use_dora=True)
    with torch.no_grad():
        expected = theirs(x)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_model(kind))
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    dora = ours._adapterhub.adapters["p"].by_name["conv2"]
    assert dora.magnitude.shape == (1, ours.conv2.out_channels, *(1,) * (x.dim() - 2))
    with torch.no_grad():
        adapted = ours(x)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)
    _check_peft_files_and_merged(tmp_path, kind, theirs, ours, x, adapted)
    ours.unmerge_adapter("p")
    torch.testing.assert_close(ours.conv2.weight, _model(kind).conv2.weight, atol=1e-5, rtol=0)

    fresh = peft.get_peft_model(
        _model(kind), peft.LoraConfig(r=2, target_modules=["conv1", "conv2"], use_dora=True)
    )
    ours.add_adapter("t", {"method": "dora", "r": 2, "target_modules": ["conv1", "conv2"]})
    for name in ("conv1", "conv2"):
        theirs_magnitude = fresh.get_submodule(name).lora_magnitude_vector["default"].weight
        ours_magnitude = ours._adapterhub.adapters["t"].by_name[name].magnitude
        torch.testing.assert_close(ours_magnitude, theirs_magnitude, atol=1e-5, rtol=0)
    ours.train_adapter("t")
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "magnitude") for n in trainable)
    target = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(7))
    losses = fit_mse(ours, lambda: ours(x), target, 10)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", list(CASES))
def test_conv_nd_lora_trains_only_its_factors(kind):
    x = _inputs(kind)
    ours = adapterhub.init(_model(kind))
    ours.add_adapter("t", {"method": "lora", "r": 2, "target_modules": ["conv1", "conv2"]})
    ours.train_adapter("t")
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    target = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(7))
    losses = fit_mse(ours, lambda: ours(x), target, 15)
    assert losses[-1] < losses[0]
    changed = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


@pytest.mark.parametrize(
    ("conv", "what"),
    [
        (nn.Conv1d(4, 4, 3, dilation=2), r"dilation=\(2,\)"),
        (nn.Conv3d(2, 2, 3, padding=1, padding_mode="circular"), "padding_mode='circular'"),
    ],
)
def test_conv_nd_refusals(conv, what):
    with pytest.raises(ConfigError, match=what):
        adapterhub.init(nn.Sequential(conv)).add_adapter("g", {"method": "lora", "target_modules": ["0"]})


def test_whisper_conv1d_lora_round_trips_and_its_manifest_says_conv1d(tmp_path):
    """A spec model's nn.Conv1d (Whisper's encoder stem) beside a spec point: saved and loaded back (both layouts)
    with identical outputs, and the manifest (from the whole files and from the headers alone) records the
    convolution's kind, channels and kernel. (peft cannot run this model with its Conv1d wrapped: Whisper's encoder
    reads ``conv1.stride``, which peft's wrapper lacks.)"""
    from adapterhub.hub.server.header_inspect import inspect_from_headers
    from adapterhub.io.manifest import inspect_adapter_dir
    from tiny_models import build, make_whisper_inputs, perturb

    inputs = make_whisper_inputs()

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return adapterhub.init(build("whisper", "base"))

    ours = fresh()
    ours.add_adapter("p", {"method": "lora", "r": 2, "target_modules": ["conv1", "conv2", "q_proj"]})
    perturb(ours._adapterhub.adapters["p"], std=0.2)
    ours.set_active_adapters("p")
    with torch.no_grad():
        plain = fresh()(**inputs).last_hidden_state
        expected = ours(**inputs).last_hidden_state
    assert not torch.allclose(plain, expected, atol=1e-3)
    for layout in ("adapterhub", "peft"):
        directory = ours.save_adapter(tmp_path / layout, "p", layout=layout)
        again = fresh()
        again.load_adapter(directory, load_as="p", set_active=True)
        with torch.no_grad():
            torch.testing.assert_close(again(**inputs).last_hidden_state, expected, atol=1e-6, rtol=0)
    directory = tmp_path / "adapterhub"
    full, light = inspect_adapter_dir(directory), inspect_from_headers(directory)
    assert full.modules == light.modules
    conv1 = ours.get_submodule("encoder.conv1")
    shape = next(m for m in full.modules if m.path == "encoder.conv1")
    assert (shape.kind, shape.r, shape.d_in, shape.d_out, shape.kernel) == (
        "conv1d",
        2,
        conv1.in_channels,
        conv1.out_channels,
        conv1.kernel_size,
    )


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(-1))


def _grouped() -> Grouped:
    torch.manual_seed(0)
    return Grouped().eval()


def test_grouped_conv_lora_matches_peft_and_refuses_merging(tmp_path):
    """A grouped convolution (peft: ``lora_B`` grouped as the module, rank divisible by groups, no merge)."""
    x = torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(3))
    theirs = peft.get_peft_model(_grouped(), peft.LoraConfig(r=4, lora_alpha=4, target_modules=["conv"]))
    randomize_peft_lora(theirs)
    with torch.no_grad():
        expected = theirs.eval()(x)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_grouped())
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    assert ours._adapterhub.adapters["p"].by_name["conv"].lora_B.shape == (6, 2, 1)
    with torch.no_grad():
        adapted = ours(x)
        torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(_grouped(), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), adapted, atol=1e-5, rtol=0)
    weight = ours.conv.weight.detach().clone()
    with pytest.raises(ConfigError, match="groups=2 has no single weight update"):
        ours.merge_adapter("p")
    assert torch.equal(ours.conv.weight, weight) and ours.merged_adapters == []
    with pytest.raises(ConfigError, match="rank 3 is not divisible"):
        ours.add_adapter("odd", {"method": "lora", "r": 3, "target_modules": ["conv"]})
    with pytest.raises(ConfigError, match="dora on grouped convolutions"):
        ours.add_adapter("d", {"method": "dora", "r": 2, "target_modules": ["conv"]})
