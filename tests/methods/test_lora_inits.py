"""LoRA initialisations beyond 'lora' / 'gaussian' equal peft 0.21.2's: the factors, the replaced base weight and
the outputs, on a tiny BERT and a tiny Llama (same seeds for the random ones: pissa_niter_K, orthogonal)."""

from __future__ import annotations

import inspect

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE_LAYER
from tiny_models import build, make_inputs

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj", "down_proj"]}


def _cpu_loftq(monkeypatch):
    """peft's ``loftq_init`` computes on "cuda" (or "xpu") only; the same function with its compute device set
    to the CPU, so its math runs here."""
    from peft.tuners.lora import layer as lora_layer
    from peft.utils import loftq_utils

    source = inspect.getsource(loftq_utils.loftq_init)
    line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    assert line in source  # peft's code changed: revisit this test
    namespace = dict(vars(loftq_utils))
    exec(source.replace(line, 'compute_device = "cpu"').replace("@torch.no_grad()\n", ""), namespace)
    monkeypatch.setattr(lora_layer, "loftq_init", torch.no_grad()(namespace["loftq_init"]))


def pair(arch: str, init: str, r: int = 4, alpha: float = 8, seed: int = 5, **options):
    """(peft model, our model) with the same base, LoRA on TARGETS[arch] with ``init``, seeded alike."""
    peft_options = {}
    if init == "loftq":
        peft_options["loftq_config"] = {
            "loftq_bits": options.get("loftq_bits", 4),
            "loftq_iter": options.get("loftq_iter", 1),
        }
    base = build(arch)
    torch.manual_seed(seed)
    theirs = peft.get_peft_model(
        base,
        peft.LoraConfig(
            r=r, lora_alpha=alpha, target_modules=TARGETS[arch], init_lora_weights=init, **peft_options
        ),
    ).eval()
    ours = adapterhub.init(build(arch))
    config = {
        "method": "lora",
        "r": r,
        "alpha": alpha,
        "target_modules": TARGETS[arch],
        "init": init,
        **options,
    }
    torch.manual_seed(seed)
    ours.add_adapter("x", config=config, set_active=True)
    return theirs, ours.eval()


def our_layers(model) -> dict:
    """``{module path: LoRALayer}`` of adapter ``x`` (targeted by ``target_modules``)."""
    lora = model._adapterhub.adapters["x"]
    out = {}
    for (layer, point), path in lora.module_paths().items():
        out[path] = lora.layer_at(layer, ("module", path) if layer == MODULE_LAYER else point)
    return out


def check_equal(theirs, ours, atol: float = 1e-6) -> None:
    """Same lora_A / lora_B / base weights at every target, and the same outputs."""
    weights = dict(ours.named_parameters())
    layers = our_layers(ours)
    found = 0
    for name, module in theirs.base_model.model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        found += 1
        mine = layers[name]
        torch.testing.assert_close(weights[f"{name}.weight"], module.base_layer.weight, atol=atol, rtol=0)
        torch.testing.assert_close(mine.lora_A, module.lora_A["default"].weight, atol=atol, rtol=0)
        torch.testing.assert_close(mine.lora_B, module.lora_B["default"].weight, atol=atol, rtol=0)
    assert found == len(layers) > 0
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        got = ours(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


QUERY = {"llama": "layers.0.self_attn.q_proj.weight", "bert": "encoder.layer.0.attention.self.query.weight"}


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("init", ["pissa", "pissa_niter_3", "olora", "orthogonal"])
def test_init_equals_peft(arch, init):
    theirs, ours = pair(arch, init)
    check_equal(theirs, ours)
    original = build(arch)
    changed = dict(ours.named_parameters())[QUERY[arch]]
    unchanged = dict(original.named_parameters())[QUERY[arch]]
    # the residual base: changed by PiSSA / OLoRA; orthogonal leaves it (B A = 0)
    assert torch.equal(changed, unchanged) == (init == "orthogonal")
    # a new adapter computes what the original model computed
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**inputs).last_hidden_state, original(**inputs).last_hidden_state, atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize(("bits", "iters"), [(4, 1), (4, 2), (8, 1)])
def test_loftq_equals_peft_on_cpu(arch, bits, iters, monkeypatch):
    _cpu_loftq(monkeypatch)
    theirs, ours = pair(arch, "loftq", loftq_bits=bits, loftq_iter=iters, alpha=4)
    check_equal(theirs, ours, atol=1e-5)


def test_delete_restores_the_base():
    model = adapterhub.init(build("llama"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter("p", config={"method": "lora", "r": 4, "targets": ["q", "v"], "init": "pissa"})
    assert not torch.equal(
        model.state_dict()["layers.0.self_attn.q_proj.weight"], before["layers.0.self_attn.q_proj.weight"]
    )
    model.delete_adapter("p")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)


def test_base_sharing_is_refused():
    model = adapterhub.init(build("bert"))
    model.add_adapter("plain", config="lora[r=4,targets=[q,v]]")
    with pytest.raises(ConfigError, match=r"other adapters \(plain\)"):
        model.add_adapter("p", config={"method": "lora", "r": 4, "init": "pissa"})
    assert list(model._adapterhub.adapters) == ["plain"]  # nothing changed
    model.delete_adapter("plain")
    model.add_adapter("p", config={"method": "lora", "r": 4, "init": "olora"})
    with pytest.raises(ConfigError, match=r"other adapters \(p\)"):
        model.add_adapter("q", config={"method": "lora", "r": 4, "init": "pissa"})
    with pytest.raises(ConfigError, match="replaced the base weights"):
        model.add_adapter("plain", config="lora[r=4]")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "dora", "init": "eva"}, "for method 'lora' only"),
        ({"init": "mica"}, "not implemented yet: MiCA"),
        ({"init": "pisa"}, "choose one of lora, gaussian, pissa, pissa_niter_K, olora, orthogonal, loftq"),
        ({"init": "pissa_niter_0"}, "choose one of"),
        ({"init": "orthogonal", "r": 3}, "even r"),
        ({"init": "loftq", "loftq_bits": 2}, "loftq_bits must be 4"),
        ({"init": "pissa", "loftq_iter": 3}, "apply to init='loftq' only"),
        ({"method": "dora", "init": "pissa"}, "for method 'lora' only"),
    ],
)
def test_refusals(options, message):
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=message):
        model.add_adapter("x", config={"method": "lora", "r": 4, **options})


def test_quantised_weight_is_refused():
    model = adapterhub.init(build("bert"))
    with torch.no_grad():
        layer = model.encoder.layer[0].attention.self.query
        layer.weight = torch.nn.Parameter(layer.weight.to(torch.float64), requires_grad=False)
    with pytest.raises(ConfigError, match="float64"):
        model.add_adapter("x", config={"method": "lora", "r": 4, "targets": ["q"], "init": "pissa"})


def test_embedding_target_is_refused():
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"nn\.Embedding target"):
        model.add_adapter(
            "x", config={"method": "lora", "r": 4, "target_modules": ["word_embeddings"], "init": "pissa"}
        )
