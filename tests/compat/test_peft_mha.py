"""LoRA on nn.MultiheadAttention selected by target_modules (peft's ``lora.MultiheadAttention``: ``in_proj_weight``
and ``out_proj`` changed for the call) on a tiny model without an ArchitectureSpec: peft's outputs both ways
(batch-first and not, self- and cross-attention, masks), merging, training, composition and the refusals.

peft 0.21 adds the out_proj update twice (``W + 2ΔW``, its pull request 3774); its files are read as the update
they compute and ours written so that peft computes ours (``io.peft_modules``)."""

import json

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.methods.lora_mha import AttentionModuleInputs, attention_with
from method_checks import fit_mse, randomize_peft_lora

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)


class Attend(nn.Module):
    """Self-attention (batch-first or not) over ``x``, then cross-attention to ``memory`` (sequence-first)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.cross = nn.MultiheadAttention(8, 4, bias=False, add_bias_kv=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = x if self.batch_first else x.transpose(0, 1)  # (N, L, E) or (L, N, E)
        h, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        h = h if self.batch_first else h.transpose(0, 1)  # (N, L, E)
        c, _ = self.cross(h.transpose(0, 1), memory, memory)  # (L, N, E)
        return self.fc(c.transpose(0, 1) + h)


def _model(batch_first: bool = True) -> Attend:
    torch.manual_seed(0)
    return Attend(batch_first).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    return torch.randn(3, 5, 8, generator=generator), torch.randn(4, 3, 8, generator=generator), pad


def _peft(batch_first: bool, **options: object) -> nn.Module:
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["attn", "cross"], **options)
    theirs = peft.get_peft_model(_model(batch_first), config)
    randomize_peft_lora(theirs)
    return theirs.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("rslora", [False, True])
def test_mha_lora_matches_peft_both_ways_and_merges(tmp_path, batch_first, rslora):
    x, memory, pad = _inputs()
    theirs = _peft(batch_first, use_rslora=rslora)
    with torch.no_grad():
        expected = theirs(x, memory, pad)
    theirs.save_pretrained(tmp_path / "p")
    ours = adapterhub.init(_model(batch_first))
    with torch.no_grad():
        plain = ours(x, memory, pad)
    ours.load_adapter(tmp_path / "p", load_as="p", set_active=True)
    with torch.no_grad():
        adapted = ours(x, memory, pad)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)

    ours.save_adapter(tmp_path / "x", "p", layout="peft")
    assert json.loads((tmp_path / "x" / "adapter_config.json").read_text())["target_modules"] == [
        "attn",
        "cross",
    ]
    back = peft.PeftModel.from_pretrained(_model(batch_first), tmp_path / "x").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x, memory, pad), adapted, atol=1e-5, rtol=0)

    ours.merge_adapter("p")
    merged = theirs.merge_and_unload()
    for name in (
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "cross.in_proj_weight",
        "cross.out_proj.weight",
    ):
        torch.testing.assert_close(
            ours.get_parameter(name), merged.get_parameter(name), atol=1e-5, rtol=0, msg=name
        )
    with torch.no_grad():
        torch.testing.assert_close(ours(x, memory, pad), adapted, atol=1e-5, rtol=0)
    ours.unmerge_adapter("p")
    torch.testing.assert_close(
        ours.attn.in_proj_weight, _model(batch_first).attn.in_proj_weight, atol=1e-6, rtol=0
    )

    ours.save_adapter(tmp_path / "n", "p")  # the native layout round trip
    again = adapterhub.init(_model(batch_first))
    again.load_adapter(tmp_path / "n", load_as="p", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x, memory, pad), adapted, atol=1e-6, rtol=0)


def test_mha_update_is_the_weight_change_and_a_stack_adds_them():
    """Our update is ``W + s B A`` on both projections (the math peft means); a Stack of two adapters computes the
    attention once with the sum of their updates."""
    x, memory, pad = _inputs()
    ours = adapterhub.init(_model())
    for name, seed in (("a", 1), ("b", 2)):
        ours.add_adapter(name, {"method": "lora", "r": 2, "alpha": 4, "target_modules": ["attn"]})
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in ours._adapterhub.adapters[name].parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    adapters = ours._adapterhub.adapters
    d_in = sum(adapters[n].by_name["attn"].weight_delta() for n in "ab")
    d_out = sum(adapters[n].by_name["attn:out_proj"].weight_delta() for n in "ab")
    assert d_in.shape == (24, 8) and d_out.shape == (8, 8)
    reference = _model()
    with torch.no_grad():
        reference.attn.in_proj_weight += d_in
        reference.attn.out_proj.weight += d_out
        expected = reference(x, memory, pad)
        ours.set_active_adapters(adapterhub.Stack("a", "b"))
        torch.testing.assert_close(ours(x, memory, pad), expected, atol=1e-5, rtol=0)
    arguments = AttentionModuleInputs.of_call(ours.attn, (x, x, x), {"need_weights": False}, None).arguments
    no_update = attention_with(ours.attn, torch.zeros(24, 8), torch.zeros(8, 8), arguments)[0]
    with torch.no_grad():
        torch.testing.assert_close(no_update, reference.attn.__class__.forward(_model().attn, x, x, x)[0])


def test_mha_lora_trains_only_its_factors():
    x, memory, pad = _inputs()
    ours = adapterhub.init(_model())
    ours.add_adapter("t", {"method": "lora", "r": 2, "target_modules": ["attn", "cross"]})
    ours.train_adapter("t")
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    target = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(7))
    losses = fit_mse(ours, lambda: ours(x, memory, pad), target, 15)
    assert losses[-1] < losses[0]
    changed = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in changed if "out_proj" in n} and changed <= trainable


def test_mha_refusals(tmp_path):
    x, memory, pad = _inputs()
    model = adapterhub.init(_model())
    with pytest.raises(ConfigError, match=r"dora on it is not supported"):
        model.add_adapter("d", {"method": "dora", "target_modules": ["attn"]})
    with pytest.raises(ConfigError, match=r"inside the nn.MultiheadAttention 'attn'"):
        model.add_adapter("o", {"method": "lora", "target_modules": ["out_proj"]})
    with pytest.raises(ConfigError, match=r"inside the nn.MultiheadAttention"):
        model.add_adapter("all", {"method": "lora", "target_modules": "all-linear"})
    model.add_adapter(
        "all", {"method": "lora", "target_modules": "all-linear", "exclude_modules": ["out_proj"]}
    )
    with pytest.raises(ConfigError, match=r"init='pissa'"):
        model.add_adapter("i", {"method": "lora", "init": "pissa", "target_modules": ["attn"]})
    separate = nn.Sequential(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    with pytest.raises(ConfigError, match="kdim=4"):
        adapterhub.init(separate).add_adapter("k", {"method": "lora", "target_modules": ["0"]})
    model.add_adapter("a", {"method": "lora", "r": 2, "target_modules": ["attn"]})
    model.add_adapter("b", {"method": "lora", "r": 2, "target_modules": ["attn"]})
    model.set_active_adapters(adapterhub.BatchSplit("a", "b", batch_sizes=[1, 2]))
    with pytest.raises(ConfigError, match="BatchSplit"):
        model(x, memory, pad)
    # a peft file from a peft after 0.21 (which may have fixed its doubled out_proj update) is refused by name
    theirs = _peft(True)
    theirs.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    config["peft_version"] = "0.22.0"
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFileError, match=r"written by peft 0\.22\.0"):
        adapterhub.init(_model()).load_adapter(tmp_path / "p")


def test_mha_with_held_biases_or_an_inner_saved_copy_is_refused():
    model = adapterhub.init(_model())
    with pytest.raises(ConfigError, match=r"bias=.lora_only. with the nn\.MultiheadAttention"):
        model.add_adapter("b", {"method": "lora", "target_modules": ["attn"], "bias": "lora_only"})
    with pytest.raises(ConfigError, match=r"bias=.all. with the nn\.MultiheadAttention"):
        model.add_adapter("b", {"method": "lora", "target_modules": ["fc"], "bias": "all"})
    model.add_adapter("b", {"method": "lora", "target_modules": ["fc"], "bias": "lora_only"})
    with pytest.raises(ConfigError, match=r"modules_to_save selects .attn\.out_proj."):
        model.add_adapter(
            "s", {"method": "lora", "target_modules": ["fc"], "modules_to_save": ["attn.out_proj"]}
        )
