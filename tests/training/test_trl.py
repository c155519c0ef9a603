"""An adapterhub model in trl's ``SFTTrainer`` (``adapterhub.training.sft_trainer``): the loss falls, only the
adapter changes, ``save_model`` writes an adapter directory that reloads into a fresh base with the same outputs."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.training import sft_trainer
from tiny_chat import chat_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PAIRS = [("france", "paris"), ("germany", "berlin"), ("italy", "rome"), ("spain", "madrid")]
WORDS = ["what", "is", "the", "capital", "of", *(w for pair in PAIRS for w in pair)]


def _base(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _chat_rows():
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"what is the capital of {country}"},
                {"role": "assistant", "content": capital},
            ]
        }
        for country, capital in PAIRS
    ]
    return datasets.Dataset.from_list(rows * 4)


def _config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,  # else accelerate leaves the model's forward under bf16 autocast after training
    )
    return trl.SFTConfig(**{**settings, **overrides})


@pytest.mark.parametrize("reentrant", [False, True])
def test_sft_trainer_trains_the_adapter_and_saves_adapter_files(tmp_path, reentrant):
    tokenizer = chat_tokenizer(WORDS)
    model = adapterhub.init(_base(tokenizer))
    model.add_adapter("sft", config="lora")
    model.train_adapter("sft")
    base_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub")
    }
    adapter_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("_adapterhub")
    }
    args = _config(tmp_path, gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert args.gradient_checkpointing  # trl's default: the checkpointed layers run our adapters too
    trainer = sft_trainer(model, args=args, train_dataset=_chat_rows(), processing_class=tokenizer)
    trainer.train()

    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05
    for name, param in model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), name  # the base is bit-identical
    assert all(
        not torch.equal(p, adapter_before[n]) for n, p in model.named_parameters() if n in adapter_before
    )

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "sft" / "adapter_config.json").is_file() and (out / "sft" / "adapter.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "adapter_model.safetensors").exists()

    fresh = adapterhub.init(_base(tokenizer))
    fresh.load_adapter(out / "sft", set_active=True)
    model.eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is the capital of italy"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad(), model.adapter_setup("sft"):
        expected = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, expected)


def test_sft_trainer_refuses_peft_config_and_models_without_adapters(tmp_path):
    tokenizer = chat_tokenizer(WORDS)
    plain = _base(tokenizer)
    with pytest.raises(ConfigError, match=r"adapterhub\.init"):
        sft_trainer(plain, args=_config(tmp_path), train_dataset=_chat_rows(), processing_class=tokenizer)
    model = adapterhub.init(plain)
    model.add_adapter("sft", config="lora")
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="train_adapter"):
        sft_trainer(model, args=_config(tmp_path), train_dataset=_chat_rows(), processing_class=tokenizer)
    model.train_adapter("sft")
    peft = pytest.importorskip("peft")
    with pytest.raises(ConfigError, match="peft_config"):
        sft_trainer(model, peft_config=peft.LoraConfig(), args=_config(tmp_path), train_dataset=_chat_rows())


def test_without_trl_the_error_names_the_extra(monkeypatch):
    from adapterhub.training import trl as ours

    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    monkeypatch.setattr(ours, "_CLASSES", {})
    tokenizer = chat_tokenizer(WORDS)
    model = adapterhub.init(_base(tokenizer))
    model.add_adapter("sft", config="lora")
    model.train_adapter("sft")
    with pytest.raises(ImportError, match=r"pip install adapterhub\[trl\]"):
        sft_trainer(model)


def test_sft_checkpoints_hold_the_adapter_and_resume(tmp_path):
    """Checkpoints written during training are adapter directories; resuming from one restores the adapter and
    ends where the uninterrupted run ended."""

    def run(resume=None, max_steps=4):
        tokenizer = chat_tokenizer(WORDS)
        model = adapterhub.init(_base(tokenizer))
        model.add_adapter("sft", config="lora")
        model.train_adapter("sft")
        args = _config(tmp_path, max_steps=max_steps, save_strategy="steps", save_steps=2, logging_steps=1)
        trainer = sft_trainer(model, args=args, train_dataset=_chat_rows(), processing_class=tokenizer)
        trainer.train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("_adapterhub")}

    full = run()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "sft" / "adapter.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    resumed = run(resume=str(checkpoint))
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5)


def test_sft_trainer_runs_adalora_s_allocator(tmp_path):
    tokenizer = chat_tokenizer(WORDS)
    model = adapterhub.init(_base(tokenizer))
    model.add_adapter("sft", config="adalora[init_r=3,target_r=1,tfinal=2,targets=[q,v]]")
    model.train_adapter("sft")
    adapter = model._adapterhub.adapters["sft"]
    trainer = sft_trainer(
        model, args=_config(tmp_path, max_steps=6), train_dataset=_chat_rows(), processing_class=tokenizer
    )
    trainer.train()
    assert adapter.config.total_step == 6  # from the trainer's max_steps
    pattern = dict(adapter.config.rank_pattern)
    assert sum(sum(mask) for mask in pattern.values()) == len(pattern) == 4  # target_r=1 per target
