"""LoRA on nn.Conv2d selected by target_modules (peft's Conv2d LoRA: ``lora_A`` with the base's kernel, stride
and padding, ``lora_B`` 1×1) on a small CNN without an ArchitectureSpec: training, merging, and peft's files both
ways with identical outputs."""

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.errors import ConfigError
from method_checks import fit_mse, randomize_peft_lora

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))


def _cnn() -> CNN:
    torch.manual_seed(0)
    return CNN().eval()


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(3))


def test_conv_lora_trains_merges_and_matches_peft_both_ways(tmp_path):
    x = _images()
    theirs = peft.get_peft_model(
        _cnn(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv1", "conv2"])
    )
    theirs.eval()
    randomize_peft_lora(theirs)
    with torch.no_grad():
        expected = theirs(x)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_cnn())
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    lora = ours._adapterhub.adapters["p"].by_name["conv2"]
    assert lora.lora_A.shape == (2, 8, 3, 3) and lora.lora_B.shape == (8, 2, 1, 1)
    with torch.no_grad():
        adapted = ours(x)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    back = peft.PeftModel.from_pretrained(_cnn(), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), adapted, atol=1e-5, rtol=0)
    ours.merge_adapter("p")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), adapted, atol=1e-5, rtol=0)
    ours.unmerge_adapter("p")

    ours.add_adapter("t", {"method": "lora", "r": 2, "target_modules": ["conv1", "conv2"]})
    ours.train_adapter("t")
    target = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    losses = fit_mse(ours, lambda: ours(x), target, 20)
    assert losses[-1] < losses[0]


def test_conv_refusals():
    model = adapterhub.init(_cnn())
    with pytest.raises(ConfigError, match=r"adalora on nn\.Conv2d is not supported"):
        model.add_adapter("d", {"method": "adalora", "target_modules": ["conv1"]})
    model.add_adapter("all", {"method": "lora", "target_modules": "all-linear"})  # Linear only, as peft
    assert list(model._adapterhub.adapters["all"].module_paths().values()) == ["fc"]
    dilated = nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2))
    with pytest.raises(ConfigError, match=r"dilation=\(2, 2\)"):
        adapterhub.init(dilated).add_adapter("g", {"method": "lora", "target_modules": ["0"]})
