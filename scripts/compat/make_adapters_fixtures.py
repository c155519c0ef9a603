#!/usr/bin/env python
"""Generate golden compatibility fixtures with the public ``adapters`` library.

Run inside the separate virtual environment made by ``setup_adapters_venv.sh``::

    .venv-adapters/bin/python scripts/compat/make_adapters_fixtures.py [--out tests/fixtures/adapters_lib]
        [--group bottleneck|lora|prefix|ia3|inv|prompt|par_bn|union ...] [--case NAME ...]

Every case directory holds a tiny random plain base model (``base/``), what
``adapters`` writes for the adapter(s) / fusion / head, and ``expected.json``
with fixed inputs and the logits (bottleneck cases) or the base model's
last_hidden_state (LoRA / prefix tuning cases) ``adapters`` computed for them
(eval mode, float32). See docs/compat.md for what each case contains.

This script only uses ``adapters``, ``transformers`` and ``torch``; it never
imports ``adapterhub``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import (
    AutoAdapterModel,
    BnConfig,
    Fuse,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    Stack,
)

NUM_LABELS = 3
ID2LABEL = {0: "neg", 1: "neu", 2: "pos"}
BATCH = 3
SEQ_LEN = 7
BASE_SEED = 1234
INPUT_SEED = 4321
MIN_EFFECT = 1e-2

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "adapters_lib"


# --------------------------------------------------------------------------- helpers


def tiny_config(arch: str):
    common = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    if arch == "bert":
        return transformers.BertConfig(max_position_embeddings=64, **common)
    if arch == "roberta":
        return transformers.RobertaConfig(max_position_embeddings=66, pad_token_id=1, **common)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64
        )
    if arch == "llama":
        # grouped-query attention (2 key/value heads for 4 query heads), so k/v shapes differ from q
        return transformers.LlamaConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    raise ValueError(arch)


BASE_CLASSES = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "gpt2": "GPT2Model",
    "llama": "LlamaModel",
}
# adapters 1.3.0 on transformers 4.57 drops the prefix of GPT-2 / Llama under the default "sdpa" attention
# (see docs/compat.md), so the decoders are run with eager attention; LoRA does not depend on it.
ATTN_IMPLEMENTATION = {"gpt2": "eager", "llama": "eager"}


def make_base(arch: str, base_dir: Path):
    """Create a tiny random plain encoder, save it, and return it (eval mode)."""
    torch.manual_seed(BASE_SEED)
    config = tiny_config(arch)
    cls = getattr(transformers, BASE_CLASSES[arch])
    model = cls(config)
    model.eval()
    model.save_pretrained(str(base_dir), safe_serialization=True)
    return model


def make_inputs():
    gen = torch.Generator().manual_seed(INPUT_SEED)
    input_ids = torch.randint(3, 99, (BATCH, SEQ_LEN), generator=gen, dtype=torch.long)
    attention_mask = torch.ones(BATCH, SEQ_LEN, dtype=torch.long)
    attention_mask[2, -2:] = 0
    return input_ids, attention_mask


def load_adapter_model(base_dir: Path, base_model, input_ids, attention_mask, **kwargs):
    """Load base/ into an adapters AutoAdapterModel and check the encoder was loaded intact."""
    model = AutoAdapterModel.from_pretrained(str(base_dir), **kwargs)
    # adapters writes config.name_or_path as "model_name" into every saved JSON; keep it free of local paths.
    model.config.name_or_path = f"tiny-random-{model.config.model_type}"
    model.eval()
    with torch.no_grad():
        ref = base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    diff = (ref - got).abs().max().item()
    assert diff < 1e-6, f"AutoAdapterModel did not load the base encoder faithfully (max diff {diff})"
    return model


def randomize(named_params, gen: torch.Generator, value_identity: bool = False):
    """Overwrite parameters in place with seeded noise, in sorted-name order.

    weights: N(0, 0.2); biases: N(0, 0.1); LayerNorm weights: 1 + 0.1 * N(0, 1);
    fusion value matrices (when ``value_identity``): I + 0.05 * N(0, 1).
    """
    with torch.no_grad():
        for name, param in sorted(named_params, key=lambda kv: kv[0]):
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            parts = name.split(".")
            is_norm = any(p.startswith("adapter_norm") for p in parts) or "LayerNorm" in name
            if value_identity and parts[-2] == "value" and param.dim() == 2:
                new = torch.eye(param.shape[0], param.shape[1], dtype=param.dtype) + 0.05 * noise
            elif is_norm and parts[-1] == "weight":
                new = 1.0 + 0.1 * noise
            elif parts[-1] == "bias" or param.dim() == 1:
                new = 0.1 * noise
            else:
                new = 0.2 * noise
            param.copy_(new)


def adapter_params(model, name: str):
    tag = f".adapters.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    assert out, f"no parameters found for adapter {name!r}"
    return out


def head_params(model, head: str):
    tag = f"heads.{head}."
    out = [(k, p) for k, p in model.named_parameters() if k.startswith(tag)]
    assert out, f"no parameters found for head {head!r}"
    return out


def fusion_params(model, fusion_name: str):
    tag = f".adapter_fusion_layer.{fusion_name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    assert out, f"no parameters found for fusion {fusion_name!r}"
    return out


def logits_for(model, input_ids, attention_mask, head: str, **kwargs):
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, head=head, **kwargs)
    return out


def base_stats(base_model, input_ids, attention_mask) -> dict:
    """Check values for loading the plain base encoder.

    ``last_hidden_state_sum_base`` is the plain sum over all positions; it is close to 0 because every
    row comes out of a LayerNorm with weight 1 and bias 0, so it is only a weak check. The absolute sum
    over real (unpadded) positions and the first-token rows are the useful ones.
    """
    with torch.no_grad():
        hs = base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    valid = attention_mask.bool().unsqueeze(-1)
    return {
        "last_hidden_state_sum_base": float(hs.double().sum().item()),
        "last_hidden_state_abs_sum_base": float((hs.double().abs() * valid).sum().item()),
        "last_hidden_state_first_token_base": hs[:, 0].tolist(),
    }


def versions():
    return {
        "adapters_version": adapters.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_effect(with_adapter, without_adapter, case: str):
    diff = (with_adapter - without_adapter).abs().max().item()
    assert diff > MIN_EFFECT, f"{case}: adapter changes logits by only {diff}"
    return diff


def fresh_case_dir(out: Path, case: str) -> Path:
    case_dir = out / case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    return case_dir


def read_config(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- cases


def single_adapter_case(out: Path, case: str, arch: str, config, seed: int, use_safetensors: bool = False):
    name = "sentiment"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base(arch, case_dir / "base")
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask)

    model.add_adapter(name, config=config)
    model.add_classification_head(name, num_labels=NUM_LABELS, id2label=ID2LABEL)
    model.set_active_adapters(name)

    gen = torch.Generator().manual_seed(seed)
    randomize(adapter_params(model, name), gen)
    randomize(head_params(model, name), gen)
    model.eval()

    logits = logits_for(model, input_ids, attention_mask, head=name).logits
    model.set_active_adapters(None)
    logits_plain = logits_for(model, input_ids, attention_mask, head=name).logits
    model.set_active_adapters(name)
    effect = check_effect(logits, logits_plain, case)

    save_kwargs = {"use_safetensors": True} if use_safetensors else {}
    model.save_adapter(str(case_dir / "adapter"), name, with_head=True, **save_kwargs)

    saved = read_config(case_dir / "adapter" / "adapter_config.json")
    expected = {
        "case": case,
        "setup": {"type": "single", "adapter": name, "adapter_dir": "adapter", "head": name},
        "adapter_name": name,
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "logits": logits.tolist(),
        "logits_without_adapter": logits_plain.tolist(),
        **base_stats(base_model, input_ids, attention_mask),
        "config": saved["config"],
        "use_safetensors": use_safetensors,
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    print(f"{case}: adapter changes logits by up to {effect:.4f}")


def fusion_case(out: Path, case: str = "bert_fusion", seed: int = 606):
    names = ["a", "b", "c"]
    fusion_name = ",".join(names)
    head = "abc"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base("bert", case_dir / "base")
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask)

    for n in names:
        model.add_adapter(n, config=adapters.SeqBnConfig(reduction_factor=4))
    model.add_adapter_fusion(Fuse(*names), config="dynamic")
    model.add_classification_head(head, num_labels=NUM_LABELS, id2label=ID2LABEL)
    model.set_active_adapters(Fuse(*names))

    gen = torch.Generator().manual_seed(seed)
    for n in names:
        randomize(adapter_params(model, n), gen)
    randomize(fusion_params(model, fusion_name), gen, value_identity=True)
    randomize(head_params(model, head), gen)
    model.eval()

    out_fuse = logits_for(model, input_ids, attention_mask, head=head, output_adapter_fusion_attentions=True)
    logits = out_fuse.logits
    attns = out_fuse["adapter_fusion_attentions"]
    fusion_attentions = {
        fname: {
            str(layer): {loc: arr.tolist() for loc, arr in sorted(locs.items())}
            for layer, locs in sorted(per_layer.items())
        }
        for fname, per_layer in attns.items()
    }
    # Same result without asking for the attentions.
    plain_fuse = logits_for(model, input_ids, attention_mask, head=head).logits
    assert torch.equal(plain_fuse, logits)

    per_adapter = {}
    for n in names:
        model.set_active_adapters(n)
        per_adapter[n] = logits_for(model, input_ids, attention_mask, head=head).logits.tolist()
    model.set_active_adapters(None)
    logits_plain = logits_for(model, input_ids, attention_mask, head=head).logits
    model.set_active_adapters(Fuse(*names))
    effect = check_effect(logits, logits_plain, case)

    for n in names:
        model.save_adapter(str(case_dir / f"adapter_{n}"), n, with_head=False)
    model.save_adapter_fusion(str(case_dir / "fusion"), fusion_name, with_head=head)

    expected = {
        "case": case,
        "setup": {
            "type": "fuse",
            "adapters": names,
            "adapter_dirs": [f"adapter_{n}" for n in names],
            "fusion_name": fusion_name,
            "fusion_dir": "fusion",
            "head": head,
            "head_dir": "fusion",
        },
        "adapter_name": fusion_name,
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "logits": logits.tolist(),
        "logits_without_adapter": logits_plain.tolist(),
        "logits_single_adapter": per_adapter,
        "fusion_attentions": fusion_attentions,
        **base_stats(base_model, input_ids, attention_mask),
        "config": read_config(case_dir / "fusion" / "adapter_fusion_config.json")["config"],
        "adapter_configs": {
            n: read_config(case_dir / f"adapter_{n}" / "adapter_config.json")["config"] for n in names
        },
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    print(f"{case}: fusion changes logits by up to {effect:.4f}")


def stack_case(out: Path, case: str = "bert_stack", seed: int = 707):
    names = ["lang", "task"]
    head = "task"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base("bert", case_dir / "base")
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask)

    for n in names:
        model.add_adapter(n, config=adapters.SeqBnConfig(reduction_factor=4))
    model.add_classification_head(head, num_labels=NUM_LABELS, id2label=ID2LABEL)
    model.set_active_adapters(Stack(*names))

    gen = torch.Generator().manual_seed(seed)
    for n in names:
        randomize(adapter_params(model, n), gen)
    randomize(head_params(model, head), gen)
    model.eval()

    logits = logits_for(model, input_ids, attention_mask, head=head).logits
    model.set_active_adapters("task")
    logits_task_only = logits_for(model, input_ids, attention_mask, head=head).logits
    model.set_active_adapters(None)
    logits_plain = logits_for(model, input_ids, attention_mask, head=head).logits
    model.set_active_adapters(Stack(*names))
    effect = check_effect(logits, logits_plain, case)
    check_effect(logits, logits_task_only, case + " (lang in stack)")

    for n in names:
        model.save_adapter(str(case_dir / f"adapter_{n}"), n, with_head=True)

    expected = {
        "case": case,
        "setup": {
            "type": "stack",
            "adapters": names,
            "adapter_dirs": [f"adapter_{n}" for n in names],
            "head": head,
            "head_dir": "adapter_task",
        },
        "adapter_name": "lang,task",
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "logits": logits.tolist(),
        "logits_without_adapter": logits_plain.tolist(),
        "logits_task_only": logits_task_only.tolist(),
        **base_stats(base_model, input_ids, attention_mask),
        "config": read_config(case_dir / "adapter_task" / "adapter_config.json")["config"],
        "adapter_configs": {
            n: read_config(case_dir / f"adapter_{n}" / "adapter_config.json")["config"] for n in names
        },
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    print(f"{case}: stack changes logits by up to {effect:.4f}")


def custom_config():
    return BnConfig(
        mh_adapter=True,
        output_adapter=True,
        reduction_factor={"0": 2, "default": 8},
        non_linearity="gelu",
        original_ln_before=True,
        original_ln_after=True,
        residual_before_ln=False,
        ln_before=True,
        ln_after=False,
        leave_out=[1],
        scaling=0.5,
    )


def lora_params(model, name: str):
    tag = f".loras.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    assert out, f"no LoRA parameters found for {name!r}"
    return out


def prefix_params(model, name: str):
    # The prefix pool is shared by all layers; named_parameters() lists each tensor once.
    tag = f".prefix_tunings.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    assert out, f"no prefix tuning parameters found for {name!r}"
    return out


def inv_params(model, name: str):
    # MAD-X: the bottleneck adapter in every layer plus the invertible adapter on the embeddings
    out = [
        (k, p)
        for k, p in model.named_parameters()
        if f".adapters.{name}." in k or f"invertible_adapters.{name}." in k
    ]
    assert any("invertible_adapters" in k for k, _ in out), f"no invertible adapter parameters for {name!r}"
    return out


def prompt_params(model, name: str):
    tag = f".prompt_tunings.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    assert out, f"no prompt tuning parameters found for {name!r}"
    return out


def prompt_config():
    return PromptTuningConfig(prompt_length=4)


def seq_bn_inv_config():
    return adapters.SeqBnInvConfig(reduction_factor=4)


def hidden_for(model, input_ids, attention_mask=None):
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with torch.no_grad():
        return model.base_model(input_ids=input_ids, **kwargs).last_hidden_state


def hidden_reloaded(case_dir: Path, input_ids, attention_mask, **load_kwargs):
    """``last_hidden_state`` after that library loads ``case_dir/adapter`` into a fresh model of ``case_dir/base``."""
    fresh = AutoAdapterModel.from_pretrained(str(case_dir / "base"), **load_kwargs).eval()
    fresh.set_active_adapters(fresh.load_adapter(str(case_dir / "adapter")))
    fresh.eval()
    return hidden_for(fresh, input_ids, attention_mask)


def run_method_cases(argv, description: str, cases: dict, make_case) -> int:
    """The command line of a one-method fixture script: ``--out``, ``--case`` (repeatable); runs
    ``make_case(out, case, arch, config, seed)`` for each selected ``cases[case] = (arch, config factory, seed)``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--case", action="append", choices=sorted(cases), help="only these cases (repeatable)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # bit-stable CPU results
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)
    assert adapters.__version__.startswith("1.3"), adapters.__version__
    args.out.mkdir(parents=True, exist_ok=True)
    for case in args.case or cases:
        arch, make_config, seed = cases[case]
        make_case(args.out, case, arch, make_config(), seed)
    return 0


def lora_qv_config():
    return LoRAConfig(r=8, alpha=16, selfattn_lora=True, attn_matrices=["q", "v"])


def lora_qkv_ffn_config():
    return LoRAConfig(
        r=8,
        alpha=16,
        selfattn_lora=True,
        attn_matrices=["q", "k", "v"],
        intermediate_lora=True,
        output_lora=True,
    )


def ia3_config():
    # their default (IA)³: k, v and the intermediate (FFN up) projection, scaled outputs; alpha=2 so the alpha
    # factor of their forward (output * lora_B * alpha) is exercised
    return IA3Config(alpha=2)


def randomize_ia3(named_params, gen: torch.Generator):
    """(IA)³ vectors: 1 + 0.2 * N(0, 1) (perturbed around the identity), in sorted-name order."""
    with torch.no_grad():
        for _, param in sorted(named_params, key=lambda kv: kv[0]):
            param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))


def prefix_config():
    return PrefixTuningConfig(prefix_length=5, bottleneck_size=16, flat=False)


def peft_case(out: Path, case: str, arch: str, kind: str, config, seed: int):
    """One LoRA or prefix tuning adapter, no head; the expected outputs are the base model's last_hidden_state.

    The library initialises LoRA's B to zero, so every adapter parameter is overwritten with seeded noise
    (``randomize``) before anything is computed or saved. For prefix tuning the reparametrised form
    (``flat=False``: embedding + MLP) is saved to ``adapter/``; then ``eject_prefix_tuning`` turns it into the
    flat form, which is saved to ``adapter_flat/`` (when the library can eject it).
    """
    name = kind
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base(arch, case_dir / "base")
    attn = ATTN_IMPLEMENTATION.get(arch)
    if kind == "prompt":
        # Under sdpa that library extends BERT's 4D mask with visible rows too: the prompt positions of a padded
        # row attend to its padding (and the real positions see that through later layers). Eager attention
        # extends only the key columns, the well-defined behaviour adapterhub implements.
        attn = "eager"
    load_kwargs = {"attn_implementation": attn} if attn else {}
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask, **load_kwargs)

    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    gen = torch.Generator().manual_seed(seed)
    if kind == "ia3":
        randomize_ia3(lora_params(model, name), gen)
    else:
        params = {"lora": lora_params, "prefix": prefix_params, "inv": inv_params, "prompt": prompt_params}[
            kind
        ](model, name)
        randomize(params, gen)
    model.eval()

    hidden = hidden_for(model, input_ids, attention_mask)
    hidden_no_mask = hidden_for(model, input_ids)
    # Rows 0 and 1 have no padding, so they must not depend on whether a mask is passed.
    assert (hidden[:2] - hidden_no_mask[:2]).abs().max().item() < 1e-5, f"{case}: mask / no-mask rows differ"
    model.set_active_adapters(None)
    hidden_plain = hidden_for(model, input_ids, attention_mask)
    model.set_active_adapters(name)
    # prompt tuning: their last_hidden_state has the prompt positions in front
    effect = check_effect(hidden[:, hidden.shape[1] - hidden_plain.shape[1] :], hidden_plain, case)

    model.save_adapter(str(case_dir / "adapter"), name, with_head=False)
    setup = {"type": kind, "adapter": name, "adapter_dir": "adapter"}
    extra = {}
    if kind == "prefix":
        try:
            model.eject_prefix_tuning(name)
        # adapters 1.3.0 cannot eject when num_key_value_heads != num_attention_heads
        except Exception as exc:
            extra["eject_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{case}: eject_prefix_tuning failed: {extra['eject_error']}")
        else:
            model.eval()
            hidden_flat = hidden_for(model, input_ids, attention_mask)
            flat_diff = (hidden_flat - hidden).abs().max().item()
            assert flat_diff < 1e-5, f"{case}: ejected prefix gives different outputs ({flat_diff})"
            model.save_adapter(str(case_dir / "adapter_flat"), name, with_head=False)
            setup["flat_adapter_dir"] = "adapter_flat"
            extra["last_hidden_state_flat"] = hidden_flat.tolist()
            extra["flat_config"] = read_config(case_dir / "adapter_flat" / "adapter_config.json")["config"]

    expected = {
        "case": case,
        "setup": setup,
        "adapter_name": name,
        "model_type": model.config.model_type,
        "attn_implementation": attn or "default",
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "last_hidden_state": hidden.tolist(),
        "last_hidden_state_no_attention_mask": hidden_no_mask.tolist(),
        "last_hidden_state_without_adapter": hidden_plain.tolist(),
        **extra,
        **base_stats(base_model, input_ids, attention_mask),
        "config": read_config(case_dir / "adapter" / "adapter_config.json")["config"],
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    print(f"{case}: adapter changes last_hidden_state by up to {effect:.4f}")


PEFT_CASES = {
    # case: (arch, kind, config factory, seed)
    "bert_lora_qv": ("bert", "lora", lora_qv_config, 811),
    "bert_lora_qkv_ffn": ("bert", "lora", lora_qkv_ffn_config, 812),
    "bert_prefix": ("bert", "prefix", prefix_config, 813),
    "gpt2_lora_qv": ("gpt2", "lora", lora_qv_config, 821),
    "gpt2_lora_qkv_ffn": ("gpt2", "lora", lora_qkv_ffn_config, 822),
    "gpt2_prefix": ("gpt2", "prefix", prefix_config, 823),
    "llama_lora_qv": ("llama", "lora", lora_qv_config, 831),
    "llama_lora_qkv_ffn": ("llama", "lora", lora_qkv_ffn_config, 832),
    "llama_prefix": ("llama", "prefix", prefix_config, 833),
    "bert_seq_bn_inv": ("bert", "inv", seq_bn_inv_config, 841),
    "bert_prompt_tuning": ("bert", "prompt", prompt_config, 851),
    "bert_ia3": ("bert", "ia3", ia3_config, 841),
    "gpt2_ia3": ("gpt2", "ia3", ia3_config, 842),
    "llama_ia3": ("llama", "ia3", ia3_config, 843),
}


def supports_safetensors() -> bool:
    import inspect

    return "use_safetensors" in inspect.signature(adapters.BertAdapterModel.save_adapter).parameters


BOTTLENECK_CASES = [
    "bert_seq_bn",
    "bert_double_seq_bn",
    "roberta_seq_bn",
    "roberta_double_seq_bn",
    "bert_custom",
    "bert_seq_bn_safetensors",
    "bert_fusion",
    "bert_stack",
]
PAR_BN_CASES = ["bert_par_bn", "gpt2_par_bn", "bert_param_counts"]
# Their configs whose trainable parameter count on the tiny BERT our tests compare with ours; our preset string
# for each is stored beside the count.
PARAM_COUNT_CONFIGS = {
    "parallel": ("par_bn", lambda: adapters.ParBnConfig()),
    "parallel_both_sites": (
        "par_bn[after_attention=true,reduction_factor=4]",
        lambda: adapters.ParBnConfig(mh_adapter=True, reduction_factor=4),
    ),
    "compacter": ("compacter[reduction_factor=2]", lambda: adapters.CompacterConfig(reduction_factor=2)),
    "compacter++": (
        "compacter++[reduction_factor=2]",
        lambda: adapters.CompacterPlusPlusConfig(reduction_factor=2),
    ),
    "compacter_rank2_unshared_factorized_rule_nobias": (
        "compacter[reduction_factor=2,phm_rank=2,shared_phm_rule=false,factorized_phm_rule=true,phm_bias=false]",
        lambda: adapters.CompacterConfig(
            reduction_factor=2, phm_rank=2, shared_phm_rule=False, factorized_phm_rule=True, phm_bias=False
        ),
    ),
    "compacter_full_W_phm8": (
        "compacter[reduction_factor=2,factorized_phm_W=false,phm_dim=8]",
        lambda: adapters.CompacterConfig(reduction_factor=2, factorized_phm_W=False, phm_dim=8),
    ),
}


def param_counts_case(out: Path, case: str = "bert_param_counts"):
    """Trainable parameters of one adapter (with its shared PHM rule) per config, on the tiny BERT."""
    case_dir = fresh_case_dir(out, case)
    counts = {}
    for key, (ours, make_config) in PARAM_COUNT_CONFIGS.items():
        torch.manual_seed(BASE_SEED)
        model = transformers.BertModel(tiny_config("bert"))
        adapters.init(model)
        model.add_adapter("a", config=make_config())
        total = sum(
            p.numel()
            for n, p in model.named_parameters()
            if ".adapters.a." in n or n.startswith("shared_parameters.a.")
        )
        counts[key] = {"ours": ours, "theirs": make_config().to_dict(), "count": total}
    write_json(case_dir / "expected.json", {"case": case, "counts": counts, **versions()})
    print(case, {k: v["count"] for k, v in counts.items()})


def union_case(out: Path, case: str, config, seed: int):
    """A ConfigUnion adapter (MAM, UniPELT) on the tiny BERT, every parameter of it perturbed (prefix pool, parallel
    or sequential adapters, LoRA, gates); expected: last hidden states with and without it."""
    name = "union"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base("bert", case_dir / "base")
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask)
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    gen = torch.Generator().manual_seed(seed)
    params = [(k, p) for k, p in model.named_parameters() if f".{name}." in f".{k}."]
    assert params, f"no parameters of {name!r}"
    randomize(params, gen)
    model.eval()
    hidden = hidden_for(model, input_ids, attention_mask)
    model.set_active_adapters(None)
    plain = hidden_for(model, input_ids, attention_mask)
    effect = check_effect(hidden, plain, case)
    model.save_adapter(str(case_dir / "adapter"), name, with_head=False)
    saved = read_config(case_dir / "adapter" / "adapter_config.json")
    write_json(
        case_dir / "expected.json",
        {
            "case": case,
            "setup": {"type": "single", "adapter": name, "adapter_dir": "adapter"},
            "input_ids": input_ids.tolist(),
            "attention_mask": attention_mask.tolist(),
            "last_hidden_state": hidden.tolist(),
            "last_hidden_state_without_adapter": plain.tolist(),
            "num_parameters": sum(p.numel() for _, p in params),
            "config": saved["config"],
            **versions(),
        },
    )
    print(f"{case}: adapter changes hidden states by up to {effect:.4f}")


UNION_CASES = {
    "bert_mam": (lambda: adapters.MAMConfig(), 1101),
    "bert_unipelt": (lambda: adapters.UniPELTConfig(), 1202),
}


GROUPS = {
    "union": list(UNION_CASES),
    "par_bn": PAR_BN_CASES,
    "bottleneck": BOTTLENECK_CASES,
    "lora": [c for c, v in PEFT_CASES.items() if v[1] == "lora"],
    "prefix": [c for c, v in PEFT_CASES.items() if v[1] == "prefix"],
    "inv": [c for c, v in PEFT_CASES.items() if v[1] == "inv"],
    "prompt": [c for c, v in PEFT_CASES.items() if v[1] == "prompt"],
    "ia3": [c for c, v in PEFT_CASES.items() if v[1] == "ia3"],
}
CASES = BOTTLENECK_CASES + list(PEFT_CASES) + PAR_BN_CASES + list(UNION_CASES)


def run_case(out: Path, case: str):
    if case == "bert_seq_bn":
        single_adapter_case(out, case, "bert", adapters.SeqBnConfig(reduction_factor=4), seed=101)
    elif case == "bert_double_seq_bn":
        single_adapter_case(out, case, "bert", adapters.DoubleSeqBnConfig(reduction_factor=4), seed=202)
    elif case == "roberta_seq_bn":
        single_adapter_case(out, case, "roberta", adapters.SeqBnConfig(reduction_factor=4), seed=303)
    elif case == "roberta_double_seq_bn":
        single_adapter_case(out, case, "roberta", adapters.DoubleSeqBnConfig(reduction_factor=4), seed=404)
    elif case == "bert_custom":
        single_adapter_case(out, case, "bert", custom_config(), seed=505)
    elif case == "bert_seq_bn_safetensors":
        if not supports_safetensors():
            print(f"{case}: skipped, this adapters version has no use_safetensors option")
            return
        single_adapter_case(
            out, case, "bert", adapters.SeqBnConfig(reduction_factor=4), seed=101, use_safetensors=True
        )
    elif case == "bert_par_bn":
        single_adapter_case(out, case, "bert", adapters.ParBnConfig(), seed=808)
    elif case == "gpt2_par_bn":
        single_adapter_case(
            out, case, "gpt2", adapters.ParBnConfig(mh_adapter=True, reduction_factor=4), seed=909
        )
    elif case == "bert_param_counts":
        param_counts_case(out, case)
    elif case == "bert_fusion":
        fusion_case(out, case)
    elif case == "bert_stack":
        stack_case(out, case)
    elif case in UNION_CASES:
        make_config, seed = UNION_CASES[case]
        union_case(out, case, make_config(), seed)
    elif case in PEFT_CASES:
        arch, kind, make_config, seed = PEFT_CASES[case]
        peft_case(out, case, arch, kind, make_config(), seed)
    else:
        raise ValueError(f"unknown case {case!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--case", action="append", choices=CASES, help="only these cases (repeatable)")
    parser.add_argument(
        "--group",
        action="append",
        choices=sorted(GROUPS),
        help="only the cases of these groups (repeatable; combined with --case)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # bit-stable CPU results
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    selected = list(args.case or [])
    for group in args.group or []:
        selected += [c for c in GROUPS[group] if c not in selected]
    for case in selected or CASES:
        run_case(args.out, case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
