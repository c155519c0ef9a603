"""CorDA (init='corda' + model.initialize_corda) equals peft 0.21.2's preprocess_corda + get_peft_model on a tiny
Llama and a tiny BERT with the same batches: the covariances, A, B, the residual base weights and the outputs (IPM and
KPM); our saved adapters reload onto the original model with the same residual, convert to a plain LoRA that peft
loads, peft's CorDA folders load over their residual model; errors name what to call."""

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
from peft.tuners.lora.config import CordaConfig  # noqa: E402
from peft.tuners.lora.corda import preprocess_corda  # noqa: E402

TARGETS = {
    "llama": ["q_proj", "v_proj", "gate_proj", "down_proj"],
    "bert": ["query", "value", "intermediate.dense", "output.dense"],
}


def batches(n: int = 4, seq: int = 9, seed: int = 0) -> list[dict]:
    """``n`` batches of one sequence each (peft's CorDA hook squeezes the batch dimension)."""
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 99, (1, seq), generator=generator)} for _ in range(n)]


def corda_config(arch: str, method: str, r: int, alpha: float) -> dict:
    return {
        "method": "lora",
        "r": r,
        "alpha": alpha,
        "target_modules": TARGETS[arch],
        "init": "corda",
        "corda_config": {"corda_method": method},
    }


def pair(arch: str, method: str = "ipm", r: int = 4, alpha: float = 8, data=None):
    """(peft model, our model), both CorDA-initialised on the same batches."""
    data = batches() if data is None else data
    base = build(arch)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=TARGETS[arch],
        init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=method),
    )

    def run() -> None:
        for batch in data:
            base(**batch)

    preprocess_corda(base, config, run_model=run)
    theirs = peft.get_peft_model(base, config).eval()
    ours = adapterhub.init(build(arch))
    ours.add_adapter("x", corda_config(arch, method, r, alpha), set_active=True)
    ours.initialize_corda("x", data)
    return theirs, ours.eval()


def outputs(model, seed: int = 9) -> torch.Tensor:
    inputs = {"input_ids": torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(seed))}
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_corda_equals_peft(arch, method):
    theirs, ours = pair(arch, method)
    check_base_init_matches_peft(theirs, ours, outputs)


def test_covariance_equals_peft_and_can_be_given():
    data = batches()
    base = build("llama")
    config = peft.LoraConfig(r=4, target_modules=TARGETS["llama"], init_lora_weights="corda")
    config.corda_config.prune_temporary_fields = False

    def run() -> None:
        for batch in data:
            base(**batch)

    preprocess_corda(base, config, run_model=run)
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("x", corda_config("llama", "ipm", 4, 8))
    covariance = ours.get_corda_covariance("x", data)
    expected = {
        name: m.covariance_matrix for name, m in base.named_modules() if hasattr(m, "covariance_matrix")
    }
    assert set(covariance) == set(expected)
    for path, matrix in covariance.items():
        torch.testing.assert_close(matrix, expected[path], atol=1e-6, rtol=1e-6)
    # a given covariance (peft's covariance_file dict) initialises without a data pass, to the same numbers
    other = adapterhub.init(build("llama"))
    other.add_adapter("x", corda_config("llama", "ipm", 4, 8), set_active=True)
    other.initialize_corda("x", covariance=expected)
    ours.set_active_adapters("x")
    ours.initialize_corda("x", covariance=covariance)
    torch.testing.assert_close(outputs(other), outputs(ours), atol=1e-6, rtol=0)


def test_a_new_adapter_computes_the_base_and_delete_restores_it():
    original = adapterhub.init(build("llama"))
    _, ours = pair("llama")
    torch.testing.assert_close(outputs(ours), outputs(original), atol=1e-5, rtol=0)
    ours.delete_adapter("x")
    for name, param in original.named_parameters():
        torch.testing.assert_close(ours.get_parameter(name), param, atol=1e-6, rtol=0)


def test_save_round_trip_on_the_original_model(tmp_path):
    theirs, ours = pair("llama")
    perturb_lora_b(theirs, ours)
    ours.save_adapter(tmp_path / "ours", "x")
    other = adapterhub.init(build("llama"))
    other.load_adapter(str(tmp_path / "ours"), set_active=True)
    assert other._adapterhub.adapters["x"].config == ours._adapterhub.adapters["x"].config
    for path in peft_lora_paths(theirs):  # the same residual base, from the saved initial factors
        torch.testing.assert_close(other.get_submodule(path).weight, ours.get_submodule(path).weight)
    torch.testing.assert_close(outputs(other), outputs(ours))


def test_converted_to_lora_loads_in_peft_on_the_original_model(tmp_path):
    theirs, ours = pair("bert")
    perturb_lora_b(theirs, ours)
    ours.save_adapter(tmp_path / "plain", "x", layout="peft", convert_to_lora=True)
    reloaded = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "plain").eval()
    assert reloaded.peft_config["default"].init_lora_weights is True
    assert reloaded.peft_config["default"].r == 8
    torch.testing.assert_close(outputs(reloaded), outputs(ours), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="convert_to_lora=True"):
        ours.save_adapter(tmp_path / "unconverted", "x", layout="peft")


def test_peft_folder_loads_over_its_residual_model(tmp_path):
    theirs, _ = pair("llama", "kpm")
    residual = save_trained_with_residual(theirs, tmp_path / "peft", build("llama"))
    loaded = adapterhub.init(residual)
    with pytest.warns(UserWarning, match="residual model"):
        loaded.load_adapter(str(tmp_path / "peft"), load_as="x", set_active=True)
    config = loaded._adapterhub.adapters["x"].config
    assert config.init == "corda" and config.corda.corda_method == "kpm"
    torch.testing.assert_close(outputs(loaded.eval()), outputs(theirs), atol=1e-5, rtol=0)


def test_errors_name_what_to_call():
    model = adapterhub.init(build("llama"))
    model.add_adapter("x", corda_config("llama", "ipm", 4, 8), set_active=True)
    with pytest.raises(ConfigError, match=r"initialize_corda\('x', dataloader\)"):
        model(**batches(n=1)[0])
    with pytest.raises(ConfigError, match="needs a dataloader"):
        model.initialize_corda("x")
    with pytest.raises(ConfigError, match="empty"):
        model.initialize_corda("x", [])
    with pytest.raises(ConfigError, match="gave no inputs to target"):
        model.initialize_corda("x", batches(n=1), forward_fn=lambda m, b: None)
    with pytest.raises(ConfigError, match="no matrix for target"):
        model.initialize_corda("x", covariance={})
    model.initialize_corda("x", batches(n=2))
    with pytest.raises(ConfigError, match="initialised already"):
        model.initialize_corda("x", batches(n=2))
    with pytest.raises(ConfigError, match="not a LoRA adapter with init='eva'"):
        model.initialize_eva("x", batches(n=2))
    eva = adapterhub.init(build("llama"))
    eva.add_adapter("e", {"method": "lora", "init": "eva", "target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match="not a LoRA adapter with init='corda'"):
        eva.initialize_corda("e", batches(n=2))


def test_config_checks():
    with pytest.raises(ConfigError, match="Valid keys: corda_method, use_float16_for_covariance"):
        LoRAConfig(init="corda", corda_config={"method": "ipm"})
    with pytest.raises(ConfigError, match="corda_method='pm' is not valid"):
        LoRAConfig(init="corda", corda_config={"corda_method": "pm"})
    with pytest.raises(ConfigError, match="applies to init='corda' only"):
        LoRAConfig(corda_config={"corda_method": "kpm"})
    config = LoRAConfig(init="corda", corda_config={"corda_method": "kpm", "cache_file": "x.pt"})
    assert config.corda.corda_method == "kpm" and config.modifies_base
    assert LoRAConfig.from_dict(config.to_dict()) == config
