"""Fixtures for the serving tests: a tiny BERT (and a tiny GPT-2) with tokenizers saved to disk, and saved
adapters of several methods and heads, each perturbed away from identity so that it changes outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import adapterhub
from tiny_models import build, perturb, save_tiny_bert

WORDS = (
    "the a movie film plot is was and but not very good bad great awful fun dull it i liked hated who what"
)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]
MAX_POSITIONS = 24

# name -> (method config, head kind, head options)
ADAPTERS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "cls3": ("pfeiffer", "classification", {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    "cls2": ("lora", "classification", {"num_labels": 2}),
    "reg": ("pfeiffer[reduction_factor=4]", "regression", {}),
    "tag": ("lora[r=4]", "tagging", {"num_labels": 4, "id2label": {0: "O", 1: "B", 2: "I", 3: "X"}}),
    "multi": ("houlsby", "multilabel", {"num_labels": 3, "id2label": {0: "x", 1: "y", 2: "z"}}),
    "qa": ("pfeiffer", "question_answering", {}),
    "mc": ("lora", "multiple_choice", {}),
    "lang": ("pfeiffer", None, {}),
    "task": ("pfeiffer", "classification", {"num_labels": 2}),
    "fa": ("pfeiffer", None, {}),
    "fb": ("pfeiffer[reduction_factor=8]", None, {}),
}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _add_head(model: Any, name: str, kind: str, options: dict[str, Any]) -> None:
    adders = {
        "classification": model.add_classification_head,
        "regression": model.add_regression_head,
        "tagging": model.add_tagging_head,
        "multilabel": model.add_multilabel_head,
        "question_answering": model.add_qa_head,
        "multiple_choice": model.add_multiple_choice_head,
        "causal_lm": model.add_causal_lm_head,
    }
    adders[kind](name, **options)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("serve-bert"), VOCAB, MAX_POSITIONS)


@pytest.fixture(scope="session")
def adapter_dirs(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every adapter of ``ADAPTERS`` saved (with its head) under its own directory."""
    root = tmp_path_factory.mktemp("serve-adapters")
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_bert_dir)).eval())
    out = {}
    for i, (name, (config, head, options)) in enumerate(ADAPTERS.items()):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], std=0.2, seed=10 + i)
        if head is not None:
            _add_head(model, name, head, options)
            perturb(model.heads[name], std=0.5, seed=50 + i)
        out[name] = model.save_adapter(root / name, name)
    return out


@pytest.fixture(scope="session")
def fusion_dir(
    tiny_bert_dir: Path, adapter_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """AdapterFusion of ``fa`` and ``fb`` with its own 2-label classification head ``fab`` (adapters saved with it)."""
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_bert_dir)).eval())
    model.load_adapter(adapter_dirs["fa"])
    model.load_adapter(adapter_dirs["fb"])
    fuse = adapterhub.Fuse("fa", "fb")
    model.add_adapter_fusion(fuse)
    perturb(model._adapterhub.fusions["fa,fb"], std=0.3, seed=7)
    model.add_classification_head("fab", num_labels=2, id2label={0: "no", 1: "yes"})
    perturb(model.heads["fab"], std=0.5, seed=8)
    return model.save_adapter_fusion(tmp_path_factory.mktemp("serve-fusion") / "fa-fb", fuse, with_head="fab")


@pytest.fixture
def offline_model(tiny_bert_dir: Path, adapter_dirs: dict[str, Path], fusion_dir: Path) -> Any:
    """A fresh model with every adapter and the fusion loaded the ordinary way (the reference for "running it
    alone")."""
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_bert_dir)).eval())
    for directory in adapter_dirs.values():
        model.load_adapter(directory)
    model.load_adapter_fusion(fusion_dir)
    return model


@pytest.fixture(scope="session")
def tokenizer(tiny_bert_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(tiny_bert_dir))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 with a word-level tokenizer, and an adapter with a causal-LM head for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("serve-gpt2")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *WORDS.split()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=2, eos_token_id=2,
        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    transformers.GPT2Model(config).save_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(directory)).eval())
    model.add_adapter("lm", config="lora")
    perturb(model._adapterhub.adapters["lm"], std=0.2, seed=3)
    model.add_causal_lm_head("lm")
    saved = model.save_adapter(directory / "adapters" / "lm", "lm")
    return directory, saved


@pytest.fixture(scope="session")
def tiny_llama_loras(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A tiny random Llama (word-level tokenizer, context 64) and three LoRA adapters ``a``, ``b``, ``c`` for it
    (no head, each perturbed with its own seed, so that their greedy tokens differ)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory = tmp_path_factory.mktemp("serve-llama")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *WORDS.split()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    out = {}
    for seed, name in enumerate(("a", "b", "c")):
        model.add_adapter(name, config="lora")
        perturb(model._adapterhub.adapters[name], std=0.5, seed=20 + seed)
        out[name] = model.save_adapter(directory / "adapters" / name, name)
    return directory, out


@pytest.fixture(scope="module")
def llama() -> Any:
    """A tiny random Llama causal LM with two perturbed LoRA adapters ``a`` and ``b`` (one per test module; a module
    that needs other adapters defines its own ``llama``)."""
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, "lora")
        perturb(model._store.adapters[name], std=0.2, seed=10 + i)
    return model
