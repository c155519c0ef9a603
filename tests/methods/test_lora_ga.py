"""LoRA-GA (init='lora_ga' + model.initialize_lora_ga) equals peft 0.21.2's preprocess_loraga + get_peft_model on a
tiny Llama causal LM and a tiny BERT classifier with the same batches and seed: the gradients, A, B, the residual base
weights and the outputs, for every direction and scale; our saved adapters reload onto the original model with the
same residual and convert to a plain LoRA that peft loads; peft's LoRA-GA folders load over their residual model;
errors name what to call."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.spec.configs import LoRAConfig
from method_checks import (
    check_base_init_matches_peft,
    peft_lora_paths,
    perturb_lora_b,
    save_trained_with_residual,
)
from tiny_models import build

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)
from peft.tuners.lora.config import LoraGAConfig  # noqa: E402
from peft.tuners.lora.loraga import preprocess_loraga  # noqa: E402

TARGETS = {
    "llama": ["q_proj", "v_proj", "gate_proj", "down_proj"],
    "bert": ["query", "value", "intermediate.dense", "output.dense"],
}
KINDS = {"llama": "causal_lm", "bert": "classification"}
NO_DROPOUT = {"bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}, "llama": {}}


def model(arch: str) -> torch.nn.Module:
    return build(arch, KINDS[arch], **NO_DROPOUT[arch])


def batches(arch: str, n: int = 3, size: int = 2, seq: int = 8, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (size, seq), generator=generator)
        labels = ids.clone() if arch == "llama" else torch.randint(0, 2, (size,), generator=generator)
        out.append({"input_ids": ids, "labels": labels})
    return out


def ga_config(arch: str, options: dict, r: int, alpha: float) -> dict:
    return {
        "method": "lora",
        "r": r,
        "alpha": alpha,
        "target_modules": TARGETS[arch],
        "init": "lora_ga",
        "lora_ga_config": options,
    }


def pair(arch: str, options: dict | None = None, r: int = 2, alpha: float = 4, seed: int = 11):
    """(peft model, our model), both LoRA-GA-initialised on the same batches, the SVDs drawn from ``seed``."""
    options = options or {}
    data = batches(arch)
    base = model(arch)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=TARGETS[arch],
        init_lora_weights="lora_ga",
        lora_ga_config=LoraGAConfig(**options),
    )

    def train_step() -> None:
        for batch in data:
            base(**batch).loss.backward()

    preprocess_loraga(base, config, train_step)
    torch.manual_seed(seed)
    theirs = peft.get_peft_model(base, config).eval()
    ours = adapterhub.init(model(arch))
    ours.add_adapter("x", ga_config(arch, options, r, alpha), set_active=True)
    gradients = ours.get_lora_ga_gradients("x", data)
    torch.manual_seed(seed)
    ours.initialize_lora_ga("x", gradients=gradients)
    return theirs, ours.eval(), gradients


def logits(m, seed: int = 9) -> torch.Tensor:
    inputs = {"input_ids": torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(seed))}
    with torch.no_grad():
        return m(**inputs).logits


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"direction": "ArBr", "scale": "weight_svd"},
        {"direction": "A2rBr", "scale": "gd_scale"},
        {"direction": "random", "scale": "unit"},
        {"direction": "ArB2r", "scale": "stable", "stable_gamma": 4},
    ],
)
def test_lora_ga_equals_peft(arch, options):
    theirs, ours, _ = pair(arch, options)
    check_base_init_matches_peft(theirs, ours, logits)


def test_gradients_equal_peft_and_the_model_is_put_back():
    data = batches("llama")
    base = model("llama")
    config = peft.LoraConfig(
        r=2, target_modules=TARGETS["llama"], init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig()
    )

    def train_step() -> None:
        for batch in data:
            base(**batch).loss.backward()

    preprocess_loraga(base, config, train_step)
    expected = {n: m._peft_loraga_grad for n, m in base.named_modules() if hasattr(m, "_peft_loraga_grad")}
    ours = adapterhub.init(model("llama"))
    ours.add_adapter("x", ga_config("llama", {}, 2, 4))
    frozen = ours.lm_head.weight
    frozen.requires_grad_(False)
    gradients = ours.get_lora_ga_gradients("x", data)
    assert set(gradients) == set(expected)
    for path, grad in gradients.items():
        torch.testing.assert_close(grad, expected[path], atol=1e-6, rtol=1e-5)
    assert not ours.training and not frozen.requires_grad
    assert all(p.grad is None for p in ours.parameters())
    assert all(
        p.requires_grad for n, p in ours.named_parameters() if n != "lm_head.weight" and "lora" not in n
    )


def test_new_adapter_computes_the_base_and_delete_restores_it():
    original = adapterhub.init(model("llama"))
    _, ours, _ = pair("llama")
    torch.testing.assert_close(logits(ours), logits(original), atol=1e-5, rtol=0)
    ours.delete_adapter("x")
    for name, param in original.named_parameters():
        torch.testing.assert_close(ours.get_parameter(name), param, atol=1e-6, rtol=0)


def test_save_round_trip_and_conversion(tmp_path):
    theirs, ours, _ = pair("llama")
    perturb_lora_b(theirs, ours)
    ours.save_adapter(tmp_path / "ours", "x")
    other = adapterhub.init(model("llama"))
    other.load_adapter(str(tmp_path / "ours"), set_active=True)
    assert other._adapterhub.adapters["x"].config == ours._adapterhub.adapters["x"].config
    for path in peft_lora_paths(theirs):
        torch.testing.assert_close(other.get_submodule(path).weight, ours.get_submodule(path).weight)
    torch.testing.assert_close(logits(other), logits(ours))
    ours.save_adapter(tmp_path / "plain", "x", layout="peft", convert_to_lora=True)
    reloaded = peft.PeftModel.from_pretrained(model("llama"), tmp_path / "plain").eval()
    assert reloaded.peft_config["default"].init_lora_weights is True
    torch.testing.assert_close(logits(reloaded), logits(ours), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="convert_to_lora=True"):
        ours.save_adapter(tmp_path / "unconverted", "x", layout="peft")


def test_peft_folder_loads_over_its_residual_model(tmp_path):
    theirs, _, _ = pair("llama", {"direction": "ArBr"})
    residual = save_trained_with_residual(theirs, tmp_path / "peft", model("llama"))
    # peft itself loads it over the model as given (its lora_ga_init falls back without gradients)
    peft_loaded = peft.PeftModel.from_pretrained(residual, tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_loaded), logits(theirs), atol=1e-5, rtol=0)
    residual = peft_loaded.unload()
    loaded = adapterhub.init(residual)
    with pytest.warns(UserWarning, match="residual model"):
        loaded.load_adapter(str(tmp_path / "peft"), load_as="x", set_active=True)
    config = loaded._adapterhub.adapters["x"].config
    assert config.init == "lora_ga" and config.lora_ga.direction == "ArBr"
    torch.testing.assert_close(logits(loaded.eval()), logits(theirs), atol=1e-5, rtol=0)


def test_errors_name_what_to_call():
    m = adapterhub.init(model("llama"))
    m.add_adapter("x", ga_config("llama", {}, 2, 4), set_active=True)
    with pytest.raises(ConfigError, match=r"initialize_lora_ga\('x', dataloader\)"):
        m(**batches("llama", n=1)[0])
    with pytest.raises(ConfigError, match="needs a dataloader"):
        m.initialize_lora_ga("x")
    with pytest.raises(ConfigError, match="empty"):
        m.initialize_lora_ga("x", [])
    unlabelled = [{"input_ids": b["input_ids"]} for b in batches("llama", n=1)]
    with pytest.raises(ConfigError, match="needs a loss"):
        m.initialize_lora_ga("x", unlabelled)
    with pytest.raises(ConfigError, match="no matrix for target"):
        m.initialize_lora_ga("x", gradients={})
    m.initialize_lora_ga("x", batches("llama", n=1))
    with pytest.raises(ConfigError, match="initialised already"):
        m.initialize_lora_ga("x", batches("llama", n=1))
    big = adapterhub.init(model("llama"))
    big.add_adapter("x", ga_config("llama", {}, 16, 16))
    with pytest.raises(ConfigError, match="lower r"):
        big.initialize_lora_ga("x", batches("llama", n=1))


def test_config_checks():
    with pytest.raises(ConfigError, match="Valid keys: direction, scale, stable_gamma"):
        LoRAConfig(init="lora_ga", lora_ga_config={"gamma": 4})
    with pytest.raises(ConfigError, match="direction='AB' is not valid"):
        LoRAConfig(init="lora_ga", lora_ga_config={"direction": "AB"})
    with pytest.raises(ConfigError, match="stable_gamma must be"):
        LoRAConfig(init="lora_ga", lora_ga_config={"stable_gamma": 0})
    with pytest.raises(ConfigError, match="applies to init='lora_ga' only"):
        LoRAConfig(lora_ga_config={"scale": "unit"})
    config = LoRAConfig(init="lora_ga", lora_ga_config={"scale": "unit"})
    assert config.lora_ga.scale == "unit" and config.modifies_base
    assert LoRAConfig.from_dict(config.to_dict()) == config
