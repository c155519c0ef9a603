"""OFT and BOFT on tiny BERT, Llama and GPT-2: equality with peft's OFT / BOFT (same weights copied from peft; the
Cayley-Neumann series and the exact Cayley transform, block_share, coft, r instead of the block size, a block size
peft moves to a divisor), identity when new, training touches only their parameters, merge/unmerge (the base weight
times R), save/load, BOFT's butterfly factors against peft's permutations, composition, and what is refused."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Average, Fuse, Parallel, Stack
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER
from adapterhub.spec.configs import BOFTConfig, OFTConfig, resolve_config
from method_checks import (
    ACTIVE,
    check_merge,
    check_round_trip,
    check_row_blocks,
    check_training_step,
    hidden,
    make,
    make_inputs,
)
from tiny_models import build

peft = pytest.importorskip("peft", reason="peft is not installed")

ARCHS = ["bert", "llama", "gpt2"]
CONFIGS = {
    "oft": "oft[oft_block_size=8,targets=[q,v,ffn_in,attn_out]]",
    "oft-exact-share": "oft[oft_block_size=8,use_cayley_neumann=false,block_share=true,targets=[q,k,attn_out]]",
    "oft-r": "oft[r=4,oft_block_size=0,num_cayley_neumann_terms=2,targets=[v,ffn_in]]",
    "boft": "boft[boft_block_size=4,targets=[q,v,ffn_in]]",
    "boft-butterfly": "boft[boft_block_size=2,boft_n_butterfly_factor=3,targets=[q,v]]",
}
PREFIX = {
    "oft": "oft_R",
    "oft-exact-share": "oft_R",
    "oft-r": "oft_R",
    "boft": "boft_",
    "boft-butterfly": "boft_",
}


@pytest.fixture
def inputs():
    return make_inputs()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_new_is_identity_and_perturbed_changes_outputs(arch, which, inputs):
    model = make(arch, CONFIGS[which])
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    fresh = adapterhub.init(build(arch))
    fresh.add_adapter("new", config=CONFIGS[which], set_active=True)
    torch.testing.assert_close(hidden(fresh, inputs, ACTIVE), reference, atol=1e-6, rtol=0)  # R = I, s = 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_one_training_step_changes_only_the_adapter_and_head(arch, which, inputs):
    changed = check_training_step(make(arch, CONFIGS[which]), inputs)
    assert any(PREFIX[which] in n for n in changed)
    assert all(PREFIX[which] in n or ".heads." in n for n in changed)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("which", list(CONFIGS))
def test_save_load_round_trip(arch, which, inputs, tmp_path):
    check_round_trip(arch, make(arch, CONFIGS[which], names=("a",)), inputs, tmp_path, which.split("-")[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_merge_multiplies_the_weight_and_unmerge_restores(arch, which, inputs):
    check_merge(make(arch, CONFIGS[which]), inputs)


def test_merged_weight_is_w_r_transposed():
    model = make("llama", "oft[oft_block_size=8,targets=[q]]", names=("a",))
    site = model._adapterhub.adapters["a"].layer_at(0, "q")
    weight = model.layers[0].self_attn.q_proj.weight.detach().clone()
    rotation = site.matrix().detach()  # (32, 32) block diagonal, 4 blocks of 8
    assert torch.count_nonzero(rotation[:8, 8:]) == 0 and not torch.allclose(rotation, torch.eye(32))
    model.set_active_adapters("a")
    model.merge_adapter("a")
    torch.testing.assert_close(model.layers[0].self_attn.q_proj.weight, weight @ rotation.t())


def test_exact_cayley_is_orthogonal_and_coft_keeps_q_in_its_ball():
    model = make("llama", "oft[oft_block_size=8,use_cayley_neumann=false,coft=true,eps=0.01,targets=[q]]")
    site = model._adapterhub.adapters["a"].layer_at(0, "q")
    rotation = site.matrix().detach()
    torch.testing.assert_close(rotation @ rotation.t(), torch.eye(32), atol=1e-5, rtol=0)
    skew = site._skew(site.oft_R.detach())  # projected in place when used
    norms = torch.linalg.norm(skew, dim=(1, 2))
    assert torch.all(norms <= 0.01 / 2 + 1e-7)  # eps / sqrt(4 blocks)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", ["oft", "boft"])
def test_composition_blocks(arch, which, inputs):
    model = make(arch, CONFIGS[which])
    check_row_blocks(model, inputs)
    with pytest.raises(ConfigError, match=r"Fuse"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ConfigError, match=r"rotates the input of .* twice"):
        hidden(model, inputs, Stack("a", "b"))


def test_stack_with_lora_adds_its_update_and_equals_merging(inputs):
    model = make("llama", "oft[oft_block_size=8,targets=[q,v]]", names=("o",))
    model.add_adapter("l", config="lora[r=2,targets=[q,v]]")
    with torch.no_grad():
        for p in model._adapterhub.adapters["l"].parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    stacked = hidden(model, inputs, Stack("l", "o"))
    assert torch.allclose(hidden(model, inputs, Stack("o", "l")), stacked, atol=1e-5)
    model.set_active_adapters(Stack("o", "l"))
    model.merge_adapter("o")
    model.merge_adapter("l")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)


def test_stack_after_ia3_rotates_the_scaled_input_and_ia3_after_it_is_refused(inputs):
    model = make("llama", "oft[oft_block_size=8,targets=[q]]", names=("o",))
    model.add_adapter("i", config={"method": "ia3", "targets": ["v"], "input_targets": ["q"]})
    with torch.no_grad():
        for p in model._adapterhub.adapters["i"].parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    stacked = hidden(model, inputs, Stack("i", "o"))
    model.set_active_adapters(Stack("i", "o"))
    model.merge_adapter("i")
    model.merge_adapter("o")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    with pytest.raises(ConfigError, match=r"after 'o' rotated it"):
        hidden(model, inputs, Stack("o", "i"))


def test_parallel_and_average_of_oft_and_boft(inputs):
    model = make("bert", CONFIGS["oft"], names=("a",))
    model.add_adapter("b", config=CONFIGS["boft"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model._adapterhub.adapters["b"].parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    with torch.no_grad(), model.adapter_setup(Parallel("a", "b")):
        both = model(**inputs).last_hidden_state
    torch.testing.assert_close(both[1], hidden(model, inputs, "b"), atol=1e-5, rtol=0)
    half = hidden(model, inputs, Average("a", "b", weights=[0.5, 0.5]))
    assert half.shape == both[0].shape


# ------------------------------------------------------------------------------------------------ peft parity


def copy_from_peft(theirs, ours, name: str = "x", seed: int = 7) -> int:
    """Perturb peft's OFT / BOFT parameters and copy them into adapter ``name`` of ``ours``; returns how many
    modules were copied."""
    mine = ours._adapterhub.adapters[name]
    own = {path: key for key, path in mine.module_paths().items()}
    generator = torch.Generator().manual_seed(seed)
    copied = 0
    with torch.no_grad():
        for module_name, module in theirs.named_modules():
            if not hasattr(module, "oft_R") and not hasattr(module, "boft_R"):
                continue
            path = module_name.removeprefix("base_model.model.")
            layer, point = own[path]
            site = mine.layer_at(layer, (MODULE, path) if layer == MODULE_LAYER else point)
            for param_name, param in site.named_parameters():
                source = getattr(module, param_name)["default"]
                source = source.weight if param_name == "oft_R" else source
                assert source.shape == param.shape, (path, param_name)
                source.copy_(torch.randn(source.shape, generator=generator) * 0.1 + (param_name == "boft_s"))
                param.copy_(source)
            copied += 1
    return copied


TARGETS = ["query", "value", "dense", "q_proj", "v_proj", "up_proj", "down_proj", "c_attn", "c_fc", "c_proj"]
OFT_CASES = [
    {"oft_block_size": 8},
    {"oft_block_size": 8, "num_cayley_neumann_terms": 3},
    {"oft_block_size": 0, "r": 4, "use_cayley_neumann": False},
    {"oft_block_size": 16, "block_share": True},
    {"oft_block_size": 8, "coft": True, "eps": 0.05},
    {"oft_block_size": 5},  # 5 divides none of 32 / 37 / 128: peft moves it to 4 / 37 / 4 (nearest divisor)
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("options", OFT_CASES)
@pytest.mark.parametrize("arch", ["bert", "llama"])  # peft's OFT has no Conv1D (GPT-2) layer
def test_oft_matches_peft_then_merged(arch, options):
    theirs = peft.get_peft_model(build(arch), peft.OFTConfig(target_modules=TARGETS, **options)).eval()
    ours = adapterhub.init(build(arch))
    ours.add_adapter("x", config={"method": "oft", "target_modules": TARGETS, **options}, set_active=True)
    ours.eval()
    assert copy_from_peft(theirs, ours) > 0
    assert sum(p.numel() for n, p in theirs.named_parameters() if "oft_R" in n) == (
        ours.adapter_summary()["x"].parameters
    )
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)
        ours.merge_adapter("x")
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)
    if options.get("coft"):  # both projected their parameters in place, to the same values
        mine = ours._adapterhub.adapters["x"].layer_at(0, "q") if arch == "llama" else None
        if mine is not None:
            torch.testing.assert_close(
                mine.oft_R, theirs.base_model.model.layers[0].self_attn.q_proj.oft_R["default"].weight
            )


def test_oft_by_spec_point_matches_peft_with_the_same_modules(inputs):
    theirs = peft.get_peft_model(
        build("llama"), peft.OFTConfig(oft_block_size=8, target_modules=["q_proj", "up_proj"])
    )
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("x", config="oft[oft_block_size=8,targets=[q,ffn_in]]", set_active=True)
    mine = ours._adapterhub.adapters["x"]
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for i, layer in enumerate(theirs.base_model.model.layers):
            for module, point in ((layer.self_attn.q_proj, "q"), (layer.mlp.up_proj, "ffn_in")):
                source = module.oft_R["default"].weight
                source.copy_(torch.randn(source.shape, generator=generator) * 0.1)
                mine.layer_at(i, point).oft_R.copy_(source)
    theirs.eval()
    ours.eval()
    torch.testing.assert_close(
        hidden(ours, inputs, ACTIVE), theirs(**inputs).last_hidden_state.detach(), atol=1e-5, rtol=0
    )


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "options", [{"boft_block_size": 4}, {"boft_block_size": 0, "boft_block_num": 8}, {"boft_block_size": 16}]
)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_boft_matches_peft_then_merged(arch, options):
    targets = ["query", "value", "q_proj", "v_proj", "up_proj"]
    theirs = peft.get_peft_model(build(arch), peft.BOFTConfig(target_modules=targets, **options)).eval()
    ours = adapterhub.init(build(arch))
    ours.add_adapter("x", config={"method": "boft", "target_modules": targets, **options}, set_active=True)
    ours.eval()
    assert copy_from_peft(theirs, ours) > 0
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)
        ours.merge_adapter("x")
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore")
def test_boft_dropout_matches_peft_on_the_same_random_stream():
    targets = ["q_proj", "v_proj"]
    theirs = peft.get_peft_model(
        build("llama"), peft.BOFTConfig(boft_block_size=4, boft_dropout=0.5, target_modules=targets)
    )
    ours = adapterhub.init(build("llama"))
    ours.add_adapter(
        "x",
        config={"method": "boft", "boft_block_size": 4, "boft_dropout": 0.5, "target_modules": targets},
        set_active=True,
    )
    copy_from_peft(theirs, ours)
    theirs.train()
    ours.train()
    inputs = make_inputs()
    outputs = []
    for model in (theirs, ours):
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(torch.stack([model(**inputs).last_hidden_state for _ in range(3)]))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)
    ours.eval()
    with torch.no_grad():
        assert not torch.allclose(ours(**inputs).last_hidden_state, outputs[1][0], atol=1e-4)


def test_butterfly_factors_equal_peft_s_permutation_product():
    """peft builds m > 1 factors only with its CUDA extension; its permutations and product, written out here with
    peft's own block_butterfly_perm / perm2mat, equal ours."""
    from peft.tuners.boft.layer import BOFTLayer as PeftBOFT

    model = make("llama", CONFIGS["boft-butterfly"], names=("a",))
    site = model._adapterhub.adapters["a"].layer_at(0, "q")  # d_in 32, 16 blocks of 2, 3 factors
    factors, blocks, size, _ = site.boft_R.shape
    assert (factors, blocks, size) == (3, 16, 2)
    raw = site.boft_R.detach().reshape(-1, size, size)
    skew = 0.5 * (raw - raw.transpose(1, 2))
    eye = torch.eye(size).expand_as(skew)
    rotations = torch.linalg.solve(eye + skew, eye - skew, left=False).view(factors, blocks, size, size)
    expected = torch.eye(32)
    for i in range(factors):
        perm = PeftBOFT.block_butterfly_perm(None, 32, blocks // 2**i, size // 2, factors - 1)
        p = PeftBOFT.perm2mat(None, perm)
        expected = (p @ torch.block_diag(*rotations[i]) @ p.t()) @ expected
    torch.testing.assert_close(site.matrix().detach(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(expected @ expected.t(), torch.eye(32), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ configs and refusals


def test_config_keys_and_errors():
    config = resolve_config("oft[oft_block_size=16,targets=[q,v]]")
    assert isinstance(config, OFTConfig) and config.to_dict()["oft_block_size"] == 16
    assert isinstance(resolve_config("boft"), BOFTConfig)
    with pytest.raises(ConfigError, match=r"exactly one of r"):
        OFTConfig(r=4, oft_block_size=8)
    with pytest.raises(ConfigError, match=r"exactly one of boft_block_size"):
        BOFTConfig(boft_block_size=0)
    with pytest.raises(ConfigError, match=r"bias='all'.*bias='none'"):
        OFTConfig(bias="all")
    with pytest.raises(ConfigError, match=r"Valid keys"):
        resolve_config({"method": "oft", "oft_block": 8})
    with pytest.raises(ConfigError, match=r"boft_n_butterfly_factor must be a positive"):
        BOFTConfig(boft_n_butterfly_factor=0)
    model = adapterhub.init(build("llama"))
    with pytest.raises(ConfigError, match=r"not divisible by boft_block_size=5"):
        model.add_adapter("b", config="boft[boft_block_size=5]")
    with pytest.warns(UserWarning, match=r"oft_block_size=5 does not divide the input width 32"):
        model.add_adapter("o", config="oft[oft_block_size=5]")


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_refuses_embedding_targets_by_name(method):
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=rf"{method} on nn.Embedding is not supported"):
        model.add_adapter("e", config={"method": method, "target_modules": ["word_embeddings"]})


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_refuses_conv2d_targets_by_name(method):
    from torch import nn

    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(ConfigError, match=rf"{method} on nn.Conv2d is not supported"):
        adapterhub.init(cnn).add_adapter("c", {"method": method, "target_modules": ["0"]})


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("oft", {"oft_block_size": 8}),
        ("oft", {"oft_block_size": 8, "coft": True, "eps": 0.05, "use_cayley_neumann": False}),
        ("boft", {"boft_block_size": 4}),
    ],
)
def test_training_steps_match_peft(method, options):
    """Three SGD steps on the same loss give peft's parameters (coft: projected in place on each forward, as peft)."""
    targets = ["q_proj", "v_proj", "up_proj"]
    peft_config = peft.OFTConfig if method == "oft" else peft.BOFTConfig
    theirs = peft.get_peft_model(build("llama"), peft_config(target_modules=targets, **options))
    ours = adapterhub.init(build("llama"))
    ours.add_adapter("x", config={"method": method, "target_modules": targets, **options}, set_active=True)
    ours.train_adapter("x")
    copy_from_peft(theirs, ours)
    inputs = make_inputs()
    for model in (theirs, ours):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.5)
        for _ in range(3):
            optimizer.zero_grad()
            model(**inputs).last_hidden_state.pow(2).mean().backward()
            optimizer.step()
    mine = ours._adapterhub.adapters["x"]
    site = mine.layer_at(1, "q")
    module = theirs.base_model.model.layers[1].self_attn.q_proj
    if method == "oft":
        torch.testing.assert_close(site.oft_R, module.oft_R["default"].weight, atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(site.boft_R, module.boft_R["default"], atol=1e-6, rtol=0)
        torch.testing.assert_close(site.boft_s, module.boft_s["default"], atol=1e-6, rtol=0)
    assert not torch.equal(site.parameters().__next__(), torch.zeros_like(site.parameters().__next__()))
