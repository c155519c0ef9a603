"""Models without an ArchitectureSpec (a custom nn.Module, a transformers model of a type no spec describes):
LoRA, rsLoRA and DoRA by module name work and train; every method that needs a spec is refused, saying how to
write one."""

import pytest
import torch
import transformers
from torch import nn

import adapterhub
from adapterhub.errors import UnsupportedArchitectureError


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return adapterhub.init(MLP())


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    return x, (x[:, :4] * 2.0).sin()


@pytest.mark.parametrize(
    "config",
    [
        {"method": "lora", "target_modules": ["fc1", "fc2"], "r": 4},
        {"method": "lora", "target_modules": "all-linear", "r": 4, "use_rslora": True},
        {"method": "dora", "target_modules": ["fc1", "fc2"], "r": 4},
        {"method": "lora", "target_modules": ["fc1"], "r": 4, "modules_to_save": ["fc2"]},
    ],
)
def test_custom_mlp_trains_saves_and_merges(tmp_path, config):
    model = _mlp()
    base = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("_adapterhub")}
    model.add_adapter("a", config)
    model.train_adapter("a")
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(
        n.startswith("_adapterhub.adapters.a.") for n, p in model.named_parameters() if p.requires_grad
    )
    x, y = _data()
    optimiser = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    for key, value in model.state_dict().items():  # the base is untouched
        if key in base:
            assert torch.equal(value, base[key]), key
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        model.set_active_adapters(None)
        plain = model(x)
        model.set_active_adapters("a")
    assert not torch.allclose(adapted, plain)
    model.save_adapter(tmp_path / "a", "a")
    other = _mlp().eval()  # same seed: same base weights
    other.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert torch.allclose(other(x), adapted, atol=1e-6)
    model.merge_adapter("a")
    with torch.no_grad():
        merged = model(x)
    assert torch.allclose(merged, adapted, atol=1e-5)
    model.unmerge_adapter("a")
    adapterhub.deinit(model)
    with torch.no_grad():
        assert torch.allclose(model(x), plain, atol=1e-6)


def test_small_cnn_linear_layers():
    torch.manual_seed(0)
    model = adapterhub.init(SmallCNN()).eval()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        plain = model(x)
    model.add_adapter("a", {"method": "lora", "target_modules": r"head\.[13]", "r": 2}, set_active=True)
    assert sorted(model._adapterhub.adapters["a"].module_paths().values()) == ["head.1", "head.3"]
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # B starts at zero
        for p in model._adapterhub.adapters["a"].parameters():
            p.add_(0.1)
        assert not torch.allclose(model(x), plain)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("pfeiffer", "'bottleneck'"),
        ({"method": "lora"}, "'lora' by spec point"),
        ({"method": "dora", "targets": ["q"]}, "'dora' by spec point"),
        ("prefix_tuning", "'prefix_tuning'"),
        ({"method": "prompt_tuning"}, "'prompt_tuning'"),
        ({"method": "ia3"}, "'ia3'"),
    ],
)
def test_methods_needing_a_spec_are_refused(config, named):
    model = _mlp()
    with pytest.raises(UnsupportedArchitectureError) as info:
        model.add_adapter("a", config)
    message = str(info.value)
    assert "'MLP' has no ArchitectureSpec" in message and named in message
    assert "target_modules" in message and "docs/ARCHITECTURES.md" in message
    assert len(model._adapterhub.adapters) == 0


def test_transformers_model_without_spec():
    config = transformers.MPNetConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    model = adapterhub.init(transformers.MPNetModel(config)).eval()
    ids = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
    with pytest.raises(UnsupportedArchitectureError, match="'mpnet' has no ArchitectureSpec"):
        model.add_adapter("b", "pfeiffer")
    model.add_adapter("a", {"method": "lora", "target_modules": ["q", "v"], "r": 2}, set_active=True)
    paths = sorted(model._adapterhub.adapters["a"].module_paths().values())
    assert paths == [f"encoder.layer.{i}.attention.attn.{m}" for i in (0, 1) for m in ("q", "v")]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, plain)
        for p in model._adapterhub.adapters["a"].parameters():
            p.add_(0.05)
        assert not torch.allclose(model(input_ids=ids).last_hidden_state, plain)
    assert model.model_info().model_type == "mpnet"


def test_flexible_heads_are_refused():
    model = _mlp()
    with pytest.raises(UnsupportedArchitectureError, match="cannot carry flexible heads"):
        model.add_classification_head("a", num_labels=2)
    assert len(model._adapterhub.heads) == 0
