"""Models for training: loading the base model and tokenizer, the task head, one forward pass per batch, and
saving / restoring what a method trained.

A run's saved weights live in one directory (``<output_dir>/best``):

* ``training.json``: method, model path, task kind, labels, head settings, max length (enough to rebuild the
  model for ``adapterhub evaluate``);
* adapter methods: ``adapter/``, written by ``model.save_adapter`` (adapter + head + label map), loadable on its
  own with ``model.load_adapter``;
* other methods: ``weights.safetensors``, every trained parameter by name (the head included).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.api.model import init
from adapterhub.data.packaged import PACKAGED_MODELS, packaged_encoder_path, packaged_model_path
from adapterhub.data.task import TaskData
from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.heads import HEADS
from adapterhub.training.methods import Method, apply_method, parse_method

TRAINING_FILE = "training.json"
WEIGHTS_FILE = "weights.safetensors"
ADAPTER_SUBDIR = "adapter"


def load_base(
    model_path: str | None,
    *,
    causal_lm: bool = False,
    quantize: str | None = None,
    media: str | None = None,
) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, path)`` for a transformers checkpoint directory, hub name or packaged model name
    (``minilm``, ``smollm2``: :func:`adapterhub.data.packaged.packaged_model_path`), via ``AutoModel``, or via
    ``AutoModelForCausalLM`` with ``causal_lm`` (generation tasks; the default model is then ``smollm2``, and an
    encoder is refused: :func:`check_causal_lm`). ``quantize`` (``nf4``, ``fp4``, ``int8``): loaded quantised by
    bitsandbytes and prepared for k-bit training (:mod:`adapterhub.training.quantize`). With ``media``
    (``"image"``, ``"audio"``) the second item is the model's
    :class:`~adapterhub.training.media_batches.MediaProcessor` instead of a tokenizer. ``quantize="none"`` is
    the same as None."""
    from adapterhub.training.quantize import NOT_QUANTIZED, quantization_config

    if quantize == NOT_QUANTIZED:
        quantize = None
    if media is not None:
        if quantize is not None:
            raise ConfigError("--quantize is for text models here; image and audio bases load unquantised.")
        from adapterhub.training.media_batches import load_media_base

        return load_media_base(model_path, media)
    import transformers

    if causal_lm and not model_path:
        model_path = "smollm2"
    packaged = packaged_model_path(model_path) if model_path else None
    path = str(packaged) if packaged is not None else model_path or str(packaged_encoder_path())
    local = Path(path).expanduser()
    if (os.sep in path or path.startswith(".")) and not local.is_dir():
        raise ConfigError(f"--model {path}: no such directory.")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(local) if local.is_dir() else path)
        if causal_lm:
            check_causal_lm(
                transformers.AutoConfig.from_pretrained(str(local) if local.is_dir() else path), path
            )
        factory = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
        bnb = quantization_config(quantize)
        extra = {} if bnb is None else {"quantization_config": bnb}
        model = factory.from_pretrained(str(local) if local.is_dir() else path, **extra)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = f" (packaged models: {', '.join(sorted(PACKAGED_MODELS))})" if "/" not in path else ""
        raise ConfigError(f"cannot load the model {path!r}: {first}{hint}") from None
    if bnb is not None:
        from adapterhub.api.kbit import prepare_kbit_training

        prepare_kbit_training(model, gradient_checkpointing=False)
    return model, tokenizer, str(local.resolve()) if local.is_dir() else path


def model_and_tokenizer(args: Any, causal_lm: bool) -> tuple[Any, Any]:
    """What ``training.loop.train`` takes as ``model`` / ``tokenizer`` for a CLI command: the ``--model`` path
    (loaded there) without ``--quantize`` (or with ``--quantize none``), else the base loaded quantised here."""
    from adapterhub.training.quantize import NOT_QUANTIZED

    quantize = getattr(args, "quantize", None)
    if quantize is None or quantize == NOT_QUANTIZED:
        return args.model, None
    model, tokenizer, _ = load_base(args.model, causal_lm=causal_lm, quantize=quantize)
    return model, tokenizer


def check_causal_lm(config: Any, name: str) -> None:
    """Refuse a model that is not a decoder language model for a generation task (an encoder such as BERT, which
    transformers would otherwise load as a causal LM it was never trained as, or an encoder-decoder)."""
    import transformers.models.auto.modeling_auto as auto

    model_type = getattr(config, "model_type", "")
    encoder = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )
    if (
        getattr(config, "is_encoder_decoder", False)
        or encoder
        or model_type not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        raise ConfigError(
            f"{name!r} is a {model_type or 'non-decoder'} model, not a decoder language model; a generation task "
            "trains a causal LM: use --model smollm2 (or another decoder checkpoint such as a Llama, GPT-2, Qwen2)."
        )


def native_multiple_choice() -> bool:
    """True when a ``multiple_choice`` head type is registered (it then takes (batch, choices, seq) inputs)."""
    return "multiple_choice" in HEADS


def head_pooling(pooling: str | None, media: str | None) -> str:
    """The head's pooling: ``pooling`` when given, else ``mean`` over the real frames for audio rows (wav2vec2 has
    no summary token; transformers' ``Wav2Vec2ForSequenceClassification`` averages too) and the ``first`` position
    for text and image rows (the CLS token)."""
    if pooling is not None:
        return pooling
    return "mean" if media == "audio" else "first"


@dataclass(frozen=True)
class HeadSettings:
    layers: int = 2
    dropout: float = 0.1
    pooling: str = "first"


def add_task_head(
    model: nn.Module, task_kind: str, labels: tuple[str, ...], name: str, settings: HeadSettings
) -> None:
    """Add the flexible head a ``task_kind`` task needs under ``name`` (replacing one of that name).

    Multiple choice uses the ``multiple_choice`` head type when it is registered; otherwise a one-output
    classification head that scores each (context, choice) row, reshaped to (batch, choices) by
    :func:`forward_batch`, which is what a multiple-choice head computes."""
    common: dict[str, Any] = {
        "layers": settings.layers,
        "dropout": settings.dropout,
        "pooling": settings.pooling,
    }
    id2label = dict(enumerate(labels)) if labels else None
    if task_kind == "multiple_choice":
        if native_multiple_choice():
            try:
                model.add_head(name, "multiple_choice", overwrite_ok=True, **common)  # type: ignore[operator]
            except ConfigError:
                model.add_head(name, "multiple_choice", overwrite_ok=True)  # type: ignore[operator]
            return
        model.add_head(name, "classification", num_labels=1, overwrite_ok=True, **common)  # type: ignore[operator]
        return
    if task_kind == "regression":
        head_type = "regression" if "regression" in HEADS else "classification"
        model.add_head(name, head_type, num_labels=1, overwrite_ok=True, **common)  # type: ignore[operator]
        return
    if task_kind == "multilabel" and "multilabel" in HEADS:
        model.add_head(  # type: ignore[operator]
            name, "multilabel", num_labels=len(labels), id2label=id2label, overwrite_ok=True, **common
        )
        return
    model.add_head(  # type: ignore[operator]
        name,
        "classification",
        num_labels=len(labels),
        id2label=id2label,
        overwrite_ok=True,
        **({"multilabel": True} if task_kind == "multilabel" else {}),
        **common,
    )


def prepare_model(
    model: nn.Module, task: TaskData, method: Method | str, head_name: str, settings: HeadSettings
) -> nn.Module:
    """``adapterhub.init`` the model, add the task head and set what trains for ``method``.

    A generation task gets no head: the causal LM's own output layer predicts the tokens (and stays frozen
    unless the method trains the base model). A ctc task gets none either: the CTC model's own ``lm_head``
    predicts the characters and trains with every method (:func:`adapterhub.training.ctc.prepare_ctc_model`)."""
    parsed = parse_method(method) if isinstance(method, str) else method
    if task.kind == "ctc":
        from adapterhub.training.ctc import prepare_ctc_model

        return prepare_ctc_model(model, parsed, head_name)
    if task.kind == "generation":
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            raise ConfigError(
                f"a generation task needs a causal language model with its output layer; got "
                f"{type(model).__name__}. Load it with AutoModelForCausalLM (or pass --model smollm2)."
            )
        check_causal_lm(model.config, str(getattr(model.config, "name_or_path", "") or type(model).__name__))
        model = init(model)
        apply_method(model, parsed, head_name, with_head=False)
        return model
    model = init(model)
    add_task_head(model, task.kind, task.labels, head_name, settings)
    apply_method(model, parsed, head_name)
    return model


def enable_checkpointing(model: nn.Module, mode: str | None) -> None:
    """Switch on transformers' activation checkpointing on ``model`` (an ``adapterhub.init`` model): ``mode`` is
    None (nothing), ``"non-reentrant"`` or ``"reentrant"`` (``use_reentrant`` of ``torch.utils.checkpoint``).
    adapterhub wraps each layer's checkpoint function so the recompute runs under the call's adapter setup
    (``adapterhub.runtime.checkpointing``); gradients equal those without checkpointing."""
    if mode is None:
        return
    enable: Any = getattr(model, "activation_checkpointing_enable", None) or getattr(
        model, "gradient_checkpointing_enable", None
    )
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(model).__name__} does not support gradient checkpointing (transformers models whose layers "
            "do); leave --gradient-checkpointing out."
        )
    enable({"use_reentrant": mode == "reentrant"})


def forward_batch(
    model: nn.Module, batch: dict[str, torch.Tensor], kind: str
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(loss, logits)`` for one collated batch (loss is None without labels). Logits: (batch, classes),
    (batch, choices) for multiple choice, (batch, 1) for regression.

    A multiple-choice batch's ``choice_mask`` (batch, choices) goes to the model when its active flexible head
    takes it; otherwise (the model's own ``...ForMultipleChoice`` head, or no multiple-choice head type) it is
    applied here: padded choices' logits are set to the dtype's minimum and the loss is the cross-entropy over
    each example's real choices, as the flexible head computes it."""
    from adapterhub.heads.multiple_choice import mask_choices

    batch = dict(batch)
    if kind == "generation":
        labels = batch.pop("labels", None)
        logits = causal_logits(model, batch)  # (batch, seq, vocab)
        return (None if labels is None else causal_lm_loss(logits, labels)), logits
    labels = batch.pop("labels", None)
    choice_mask = batch.pop("choice_mask", None)
    if kind == "multiple_choice" and not native_multiple_choice():
        rows, choices = batch["input_ids"].shape[:2]
        flat = {key: value.reshape(rows * choices, -1) for key, value in batch.items()}
        logits = mask_choices(model(**flat).logits.reshape(rows, choices), choice_mask)  # (batch, choices)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return loss, logits
    if choice_mask is not None:
        if _head_takes(model, "choice_mask"):
            batch["choice_mask"] = choice_mask
        else:  # a built-in head: mask outside the model, loss over the real choices
            logits = mask_choices(model(**batch).logits, choice_mask)  # (batch, choices)
            loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
            return loss, logits
    if labels is None:
        return None, model(**batch).logits
    output = model(**batch, labels=labels)
    return output.loss, output.logits


def causal_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM's logits (batch, seq, vocab) for the ``seq`` input positions. Prompt tuning puts its soft
    tokens in front of the sequence and the model's own output layer returns logits for them too: only the last
    ``seq`` positions, which line up with ``input_ids`` and the labels, are kept.

    A packed batch (``position_ids``, no ``attention_mask``; :mod:`adapterhub.training.packing`) runs with
    ``use_cache=False``: transformers builds its block-diagonal mask from restarting position ids only when
    there is no key/value cache, and a causal LM creates one by default."""
    extra = {"use_cache": False} if "position_ids" in batch and "attention_mask" not in batch else {}
    logits = model(**batch, **extra).logits  # (batch, [prompt +] seq, vocab)
    return logits[:, -batch["input_ids"].shape[1] :]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy: position ``t`` predicts ``labels[t + 1]``; labels -100 carry no loss.
    ``logits`` (batch, seq, vocab), ``labels`` (batch, seq); ``mean`` over the loss-carrying tokens, or ``sum``."""
    shifted = logits[:, :-1].float()  # (batch, seq - 1, vocab)
    targets = labels[:, 1:]  # (batch, seq - 1)
    return nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction=reduction
    )


def _head_takes(model: nn.Module, name: str) -> bool:
    """Whether the active flexible head of ``model`` (or of the model a DDP wrapper holds) consumes ``name``."""
    inner = getattr(model, "module", model)
    active = getattr(inner, "active_head", None)
    heads = getattr(inner, "heads", None)
    if not isinstance(active, str) or heads is None or active not in heads:
        return False
    return name in heads[active].input_names


# ---------------------------------------------------------------------------------------------------- saving


def save_trained(model: nn.Module, directory: Path, method: Method, info: dict[str, Any]) -> int:
    """Write what ``method`` trained (plus ``training.json``) to ``directory`` atomically; returns its size in
    bytes. The previous contents are replaced only once the new ones are complete."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    head_name = info["head_name"]
    if method.is_adapter:
        with_head = info.get("kind") != "generation"
        model.save_adapter(staging / ADAPTER_SUBDIR, head_name, with_head=with_head)  # type: ignore[operator]
    else:
        from safetensors.torch import save_file

        tensors = {
            name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad
        }
        save_file(tensors, str(staging / WEIGHTS_FILE))
    if info.get("kind") == "ctc":  # the vocabulary the CTC head predicts
        from adapterhub.training.ctc import VOCAB_DIR, save_vocabulary

        save_vocabulary(info["vocabulary"], staging / VOCAB_DIR)
    size = directory_size(staging)
    (staging / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    old = directory.with_name(directory.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return size


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_training_info(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / TRAINING_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterFileError(f"cannot read {path}: {error}") from None
    if not isinstance(info, dict) or "method" not in info:
        raise AdapterFileError(f"{path} is not a training record (no 'method').")
    return info


def find_saved_run(path: str | os.PathLike[str]) -> Path:
    """The directory holding ``training.json``: ``path`` itself, or its ``best/`` (a run's output directory)."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise AdapterFileError(
            f"{directory} is not a directory (pass a run's output directory or its best/)."
        )
    for candidate in (directory, directory / "best"):
        if (candidate / TRAINING_FILE).is_file():
            return candidate
    raise AdapterFileError(
        f"{directory} holds no {TRAINING_FILE} (nor does {directory / 'best'}); pass the output directory of "
        "adapterhub train, or an adapter directory together with --model and --data."
    )


def load_trained(
    directory: Path, model_path: str | None = None, quantize: str | None = None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild a trained model from a saved run directory: ``(model, tokenizer, info)``, in eval mode. The base is
    quantised with ``quantize`` (``nf4``, ``fp4``, ``int8``; ``none``: not quantised), by default as the run
    recorded it (``training.json``'s ``quantize``; said on stderr)."""
    import sys

    from adapterhub.training.quantize import resolve_quantize

    info = read_training_info(directory)
    if info is None:
        raise AdapterFileError(f"{directory} holds no {TRAINING_FILE}.")
    generation = info.get("kind") == "generation"
    recorded = info.get("quantize")
    requested, quantize = quantize, resolve_quantize(quantize, recorded)
    if requested is None and quantize is not None:
        print(
            f"loading the base quantised {quantize}, as the run was trained (--quantize none: the float base)",
            file=sys.stderr,
        )
    no_head = generation or info.get("kind") == "ctc"  # the model's own output layer predicts
    if info.get("kind") == "ctc":
        from adapterhub.training.ctc import load_saved_ctc_base

        if quantize is not None:
            raise ConfigError(
                "--quantize is for text models here; a ctc run's speech model loads unquantised."
            )
        model, tokenizer = load_saved_ctc_base(directory, model_path or info.get("model") or "")
    else:
        model, tokenizer, _ = load_base(
            model_path or info.get("model"), causal_lm=generation, quantize=quantize, media=info.get("media")
        )
    method = parse_method(info["method"])
    model = init(model)
    head_name = info["head_name"]
    if no_head and method.is_adapter:
        model.load_adapter(directory / ADAPTER_SUBDIR, load_as=head_name, set_active=True)  # type: ignore[operator]
        model.eval()
        return model, tokenizer, info
    if method.is_adapter:
        model.load_adapter(directory / ADAPTER_SUBDIR, load_as=head_name, set_active=True)  # type: ignore[operator]
    else:
        from safetensors.torch import load_file

        settings = HeadSettings(**info.get("head", {}))
        if not no_head:
            add_task_head(model, info["kind"], tuple(info.get("labels", ())), head_name, settings)
        tensors = load_file(str(directory / WEIGHTS_FILE))
        parameters = dict(model.named_parameters())
        unknown = sorted(set(tensors) - set(parameters))
        if unknown:
            raise AdapterFileError(
                f"{directory / WEIGHTS_FILE} holds weights this model does not have ({unknown[:3]}); was it "
                "trained on another model? Pass the right --model."
            )
        with torch.no_grad():
            for name, tensor in tensors.items():
                if tuple(parameters[name].shape) != tuple(tensor.shape):
                    raise AdapterFileError(
                        f"{name}: saved shape {tuple(tensor.shape)} does not fit this model."
                    )
                parameters[name].copy_(tensor.to(parameters[name].dtype))
    if no_head:
        model.eval()
        return model, tokenizer, info
    model.active_head = head_name  # type: ignore[attr-defined]
    model.eval()
    return model, tokenizer, info
