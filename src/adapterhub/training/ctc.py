"""Speech recognition with CTC (``kind="ctc"``): a wav2vec2-like model's own CTC head (``AutoModelForCTC``:
``Wav2Vec2ForCTC``, its ``lm_head`` over the frames) trained with an adapter on ``{"audio", "text"}`` rows
(:mod:`adapterhub.data.speech`).

Vocabulary. The model folder's ``Wav2Vec2CTCTokenizer`` (its ``vocab.json``) when it has one (``source:
"model"``), else one built from the training transcripts (``source: "built"``): ``<pad>`` (id 0, the CTC
blank), ``<unk>`` (1), ``|`` (2, the word delimiter, i.e. a space) and every other character of the training
transcripts in sorted order. Either way the tokenizer is saved with the trained weights (``best/tokenizer``) and
described in ``training.json`` and ``results.json`` (``speech.vocabulary``). A transcript character outside the
vocabulary is refused, naming the row's file and line.

Model. Loaded with ``vocab_size`` = the vocabulary's size, ``pad_token_id`` = the blank and
``ctc_loss_reduction="mean"`` (transformers' CTC loss: each row's negative log-likelihood divided by its target
length, then averaged over the batch); an ``lm_head`` of another size (or none: a bare ``Wav2Vec2Model``
folder) is initialised anew. Every method also trains the ``lm_head`` (the characters it predicts may be new).

Batches. ``input_values`` (batch, samples) zero-padded with ``attention_mask`` (batch, samples), as for audio
classification (:func:`adapterhub.training.media_batches.collate_media`; the model maps the sample mask to its
frames for attention and for the CTC input lengths), and ``labels`` (batch, longest transcript) of character
ids padded with -100 (no target). Rows whose clip yields fewer frames than CTC needs (one per target character,
plus one blank between repeated characters) are refused with the row's file and line.

Decoding. Greedy: the most likely id per real frame, repeats merged, blanks dropped
(:func:`adapterhub.training.ctc_metrics.ctc_collapse`), the ids turned into text by the tokenizer (``|`` ->
space); the same text as the tokenizer's ``batch_decode`` of the frame-wise ids. ``evaluate`` reports WER, CER
(:mod:`adapterhub.training.ctc_metrics`) and the dev loss, against the transcripts as the targets spell them.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adapterhub.data.audio import audio_length, audio_rate
from adapterhub.data.resample import resampled_length
from adapterhub.data.task import Example, TaskData
from adapterhub.errors import ConfigError
from adapterhub.training.ctc_metrics import ctc_collapse, error_rates
from adapterhub.training.media_batches import MediaProcessor, collate_media, load_media_processor
from adapterhub.training.methods import Method, apply_method
from adapterhub.training.resources import autocast

VOCAB_DIR = "tokenizer"  # the saved run's tokenizer, beside adapter/ and training.json
VOCAB_FILE = "vocab.json"
BLANK, UNKNOWN, DELIMITER = "<pad>", "<unk>", "|"
SAMPLE_ROWS = 5  # rows whose predictions go into results.json


# ------------------------------------------------------------------------------------------------ vocabulary


def build_vocabulary(texts: Sequence[str]) -> dict[str, int]:
    """``<pad>`` 0 (blank), ``<unk>`` 1, ``|`` 2 (space), then the other characters of ``texts``, sorted."""
    chars = sorted({c for text in texts for c in text} - {" "})
    return {BLANK: 0, UNKNOWN: 1, DELIMITER: 2, **{c: 3 + i for i, c in enumerate(chars)}}


def _built_tokenizer(vocab: dict[str, int]) -> Any:
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / VOCAB_FILE
        path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return transformers.Wav2Vec2CTCTokenizer(
            str(path),
            bos_token=None,
            eos_token=None,
            unk_token=UNKNOWN,
            pad_token=BLANK,
            word_delimiter_token=DELIMITER,
        )


def _load_tokenizer(source: str) -> Any:
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load the CTC tokenizer in {source}: {error}") from None
    if not hasattr(tokenizer, "word_delimiter_token") or tokenizer.pad_token_id is None:
        raise ConfigError(
            f"{source} holds a {type(tokenizer).__name__}, not a CTC character tokenizer (Wav2Vec2CTCTokenizer "
            f"with a pad token as the blank); remove its {VOCAB_FILE} to build the vocabulary from the training "
            "transcripts, or save a Wav2Vec2CTCTokenizer there"
        )
    return tokenizer


def ctc_tokenizer(folder: Path | None, texts: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """``(tokenizer, record)``: the folder's CTC tokenizer when it has a ``vocab.json``, else one built from
    ``texts``; ``record`` says which (the ``vocabulary`` of ``training.json`` and ``results.json``)."""
    where: dict[str, Any]
    if folder is not None and (folder / VOCAB_FILE).is_file():
        tokenizer = _load_tokenizer(str(folder))
        where = {"source": "model", "from": str(folder / VOCAB_FILE), "path": str(folder)}
    else:
        tokenizer = _built_tokenizer(build_vocabulary(texts))
        where = {"source": "built", "from": f"the {len(texts)} training transcripts", "path": None}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    record = {
        **where,
        "size": len(tokenizer),
        "blank": tokenizer.pad_token,
        "word_delimiter": tokenizer.word_delimiter_token,
        "tokens": tokens,
    }
    return tokenizer, record


def save_vocabulary(record: dict[str, Any], directory: Path) -> None:
    """Write the tokenizer ``record`` describes (``save_pretrained``) to ``directory``: the model folder's own,
    or the built one rebuilt from ``record["tokens"]``."""
    if record["source"] == "model":
        tokenizer = _load_tokenizer(str(record["path"]))
    else:
        tokenizer = _built_tokenizer({token: i for i, token in enumerate(record["tokens"])})
    tokenizer.save_pretrained(str(directory))


@dataclass(frozen=True)
class CtcProcessor:
    """The audio preprocessing (:class:`MediaProcessor`) and the character tokenizer of a CTC run; takes the
    tokenizer's place in the training loop and ``evaluate``."""

    audio: MediaProcessor
    tokenizer: Any
    vocabulary: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "audio"

    @property
    def blank_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def description(self) -> str:
        vocab = self.vocabulary
        return (
            f"{self.audio.description}; vocabulary of {len(self.tokenizer)} "
            f"({vocab.get('source', 'given')}: {vocab.get('from', 'the tokenizer passed in')})"
        )

    def encode(self, example: Example) -> list[int]:
        """The character ids of ``example``'s transcript (space -> word delimiter); a character outside the
        vocabulary raises :class:`ConfigError` naming the row."""
        tokens = self.tokenizer.tokenize(example.text)
        vocab = self.tokenizer.get_vocab()
        missing = sorted({t for t in tokens if t not in vocab})
        if missing:
            where = example.media.where if example.media is not None else "a row"
            source = self.vocabulary.get("from", "the tokenizer")
            raise ConfigError(
                f"{where}: the transcript {example.text[:60]!r} has characters outside the vocabulary "
                f"({', '.join(map(repr, missing))}; vocabulary from {source}); normalise the transcripts (e.g. "
                "the case, punctuation) to the vocabulary's characters, or remove the row"
                + (
                    "; a built vocabulary holds the training transcripts' characters only"
                    if self.vocabulary.get("source") == "built"
                    else ""
                )
            )
        return [int(i) for i in self.tokenizer.convert_tokens_to_ids(tokens)]

    def text(self, ids: Sequence[int]) -> str:
        """The text of collapsed ids (no repeats merged, no blank): the tokenizer's ``|`` -> space and case."""
        return str(self.tokenizer.decode(list(ids), group_tokens=False))

    def decode(self, frame_ids: Sequence[int]) -> str:
        """Greedy CTC text of frame-wise best ids: repeats merged, blanks dropped, then :meth:`text`."""
        return self.text(ctc_collapse(frame_ids, self.blank_id))


# ----------------------------------------------------------------------------------------------------- model


def _ctc_model(source: str, tokenizer: Any) -> nn.Module:
    import transformers

    try:
        return transformers.AutoModelForCTC.from_pretrained(
            source,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            ctc_loss_reduction="mean",
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot load {source!r} as a CTC model (AutoModelForCTC: wav2vec2, HuBERT, WavLM, ...): {first}"
        ) from None


def _model_folder(model_path: str | None) -> tuple[str, Path | None]:
    if not model_path:
        raise ConfigError(
            "speech recognition (ctc) rows need a speech model: pass --model <folder> (a wav2vec2-like "
            "checkpoint); the default text encoder cannot read audio"
        )
    local = Path(model_path).expanduser()
    if (os.sep in model_path or model_path.startswith(".")) and not local.is_dir():
        raise ConfigError(f"--model {model_path}: no such directory.")
    return (str(local.resolve()), local) if local.is_dir() else (model_path, None)


def load_ctc_base(model_path: str | None, texts: Sequence[str]) -> tuple[nn.Module, CtcProcessor, str]:
    """``(model, processor, path)`` for training: the CTC model of ``model_path`` with a head the size of its
    vocabulary (the folder's tokenizer, else built from ``texts``) and its audio preprocessing."""
    path, folder = _model_folder(model_path)
    tokenizer, record = ctc_tokenizer(folder, texts)
    model = _ctc_model(path, tokenizer)
    audio = load_media_processor(folder, model.config, "audio")
    return model, CtcProcessor(audio, tokenizer, record), path


def load_saved_ctc_base(directory: Path, model_path: str) -> tuple[nn.Module, CtcProcessor]:
    """The base model and processor of a saved CTC run: the tokenizer saved in ``directory/tokenizer``, the
    model of ``model_path`` with a head of that size (the saved weights are loaded by the caller)."""
    saved = Path(directory) / VOCAB_DIR
    if not (saved / VOCAB_FILE).is_file():
        raise ConfigError(
            f"{directory} holds no {VOCAB_DIR}/{VOCAB_FILE}, the vocabulary the CTC head was trained on; pass the "
            "output directory of `adapterhub train --kind ctc` (or its best/)"
        )
    tokenizer = _load_tokenizer(str(saved))
    path, folder = _model_folder(model_path)
    model = _ctc_model(path, tokenizer)
    audio = load_media_processor(folder, model.config, "audio")
    record = {"source": "saved", "from": str(saved / VOCAB_FILE), "size": len(tokenizer)}
    return model, CtcProcessor(audio, tokenizer, record)


def resolve_ctc_model(model: Any, tokenizer: Any, task: TaskData) -> tuple[nn.Module, CtcProcessor, str]:
    """What ``train`` runs a ctc task on: a model path (or hub name) is loaded by :func:`load_ctc_base`; a
    model object keeps its head, with ``tokenizer`` a :class:`CtcProcessor`, a CTC tokenizer or None (the
    vocabulary of its ``config.name_or_path`` folder, else built from the training transcripts), whose size
    must be the head's."""
    texts = [example.text for example in task.train]
    if model is None or isinstance(model, str | os.PathLike):
        return load_ctc_base(None if model is None else os.fspath(model), texts)
    name = str(getattr(model.config, "name_or_path", "") or "")
    folder = Path(name) if name and Path(name).is_dir() else None
    if isinstance(tokenizer, CtcProcessor):
        processor = tokenizer
    else:
        if tokenizer is None:
            tokenizer, record = ctc_tokenizer(folder, texts)
        else:
            record = {"source": "given", "from": type(tokenizer).__name__, "size": len(tokenizer)}
        processor = CtcProcessor(load_media_processor(folder, model.config, "audio"), tokenizer, record)
    size = getattr(model.config, "vocab_size", None)
    if size != len(processor.tokenizer):
        raise ConfigError(
            f"the model's CTC head has {size} outputs but the vocabulary {len(processor.tokenizer)}; build the "
            f"model with vocab_size={len(processor.tokenizer)} (or pass the model folder's path to train)"
        )
    return model, processor, name or type(model).__name__


def prepare_ctc_model(model: nn.Module, method: Method, head_name: str) -> nn.Module:
    """``adapterhub.init`` the model and set what trains: ``method`` (an adapter named ``head_name``, the full
    model, top layers, layer norms; ``head``: nothing of the body) plus the model's own CTC output layer."""
    from adapterhub.api.model import init
    from adapterhub.heads.static import static_head_parameters

    model = init(model)
    if method.kind == "head":
        model.set_active_adapters(None)  # type: ignore[operator]
        model.requires_grad_(False)
    else:
        apply_method(model, method, head_name, with_head=False)
    head = static_head_parameters(model)
    if not head:
        raise ConfigError(
            f"{type(model).__name__} has no output layer of its own to predict characters with; a ctc task "
            "needs a CTC model (AutoModelForCTC, e.g. Wav2Vec2ForCTC)"
        )
    for param in head.values():
        param.requires_grad_(True)
    model.train()
    return model


# --------------------------------------------------------------------------------------------------- batches


def _frames_of(model: nn.Module) -> Callable[[int], int] | None:
    lengths = getattr(model, "_get_feat_extract_output_lengths", None)
    if lengths is None:
        return None
    return lambda samples: int(lengths(torch.tensor([samples]))[0])


def _real_frames(model: nn.Module, mask: torch.Tensor, frames: int) -> torch.Tensor:
    """(batch,) the frames each row's real samples yield (all ``frames`` for a model that does not say)."""
    lengths = getattr(model, "_get_feat_extract_output_lengths", None)
    if lengths is None:
        return torch.full((mask.shape[0],), frames, dtype=torch.long)
    return torch.as_tensor(lengths(mask.sum(-1))).cpu().clamp(max=frames)


class CtcDataset(Dataset[dict[str, Any]]):
    """Audio rows with their transcripts: item ``i`` is ``{"input_values": (samples,), "labels": [ids]}``. The
    transcripts are encoded (and checked against the vocabulary) here; with ``frames`` (samples -> the model's
    frames), each clip is checked to be long enough for its CTC targets."""

    def __init__(
        self,
        examples: Sequence[Example],
        processor: CtcProcessor,
        frames: Callable[[int], int] | None = None,
    ) -> None:
        self.examples = tuple(examples)
        self.processor = processor
        self.labels = [processor.encode(example) for example in self.examples]
        for example, ids in zip(self.examples, self.labels, strict=True):
            if example.media is None or example.media.kind != "audio":
                raise ConfigError(f"a ctc data set got a row without audio: {example!r}"[:300])
            if frames is None:
                continue
            needed = len(ids) + sum(1 for a, b in itertools.pairwise(ids) if a == b)
            rate = processor.audio.sampling_rate  # the clip is resampled to it when its batch is built
            have = frames(resampled_length(audio_length(example.media), audio_rate(example.media), rate))
            if have < needed:
                raise ConfigError(
                    f"{example.media.where}: the clip gives {have} frames but its transcript needs at least "
                    f"{needed} (one per character, one blank between repeats); the clip is too short for "
                    "its transcript: fix the row or remove it"
                )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        media = self.examples[index].media
        assert media is not None
        return {"input_values": self.processor.audio(media), "labels": self.labels[index]}


def collate_ctc(items: Sequence[dict[str, Any]], processor: Any = None) -> dict[str, torch.Tensor]:
    """``input_values`` / ``attention_mask`` (batch, samples) as :func:`collate_media` pads them, and ``labels``
    (batch, longest transcript) padded with -100."""
    batch = collate_media([{"input_values": item["input_values"]} for item in items])
    longest = max(len(item["labels"]) for item in items)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)  # (batch, longest transcript)
    for row, item in enumerate(items):
        labels[row, : len(item["labels"])] = torch.tensor(item["labels"], dtype=torch.long)
    batch["labels"] = labels
    return batch


def ctc_datasets(
    task: TaskData, processor: CtcProcessor, model: nn.Module
) -> tuple[CtcDataset, CtcDataset, Callable[..., dict[str, torch.Tensor]]]:
    """``(train, dev, collate_ctc)`` for a ctc task (rows checked against the vocabulary and clip lengths)."""
    if not isinstance(processor, CtcProcessor):
        raise ConfigError(f"a ctc task needs a CtcProcessor, got {type(processor).__name__}")
    frames = _frames_of(model)
    return CtcDataset(task.train, processor, frames), CtcDataset(task.dev, processor, frames), collate_ctc


def ctc_loader(
    examples: Sequence[Example], processor: Any, model: nn.Module, batch_size: int
) -> DataLoader[Any]:
    """An unshuffled loader of ``examples`` for :func:`evaluate_ctc`."""
    if not isinstance(processor, CtcProcessor):
        raise ConfigError(
            f"ctc rows need the run's CTC processor, got {type(processor).__name__}; was the run trained with "
            "--kind ctc?"
        )
    dataset = CtcDataset(examples, processor, _frames_of(model))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_ctc)


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class CtcReport:
    """``metrics`` (``wer``, ``cer``, ``loss``: the mean CTC loss per row), and per row the ``references`` (the
    transcripts as the targets spell them), the greedy ``predictions`` and the ``audio`` paths, in data order."""

    metrics: dict[str, float]
    references: tuple[str, ...]
    predictions: tuple[str, ...]
    audio: tuple[str, ...]

    def samples(self, count: int = SAMPLE_ROWS) -> list[dict[str, str]]:
        return [
            {"audio": a, "reference": r, "prediction": p}
            for a, r, p in list(zip(self.audio, self.references, self.predictions, strict=True))[:count]
        ]


@torch.no_grad()
def evaluate_ctc(
    model: nn.Module,
    loader: DataLoader[Any],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> CtcReport:
    """Greedy transcripts of every row of ``loader`` (an unshuffled loader of a :class:`CtcDataset`), scored
    against the targets; the model is left in the train/eval mode it was in."""
    dataset = loader.dataset
    if not isinstance(dataset, CtcDataset):
        raise ConfigError(f"evaluate_ctc needs a loader of a CtcDataset, got {type(dataset).__name__}")
    device = device or next(model.parameters()).device
    inner = getattr(model, "module", model)  # a DDP wrapper's model
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    loss_sum = 0.0
    try:
        for batch in loader:
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast(device, dtype):
                output = model(**batch)
            rows = int(batch["labels"].shape[0])
            loss_sum += float(output.loss) * rows
            best = output.logits.argmax(-1).cpu()  # (batch, frames)
            real = _real_frames(inner, batch["attention_mask"], best.shape[1])  # (batch,)
            predictions += [
                dataset.processor.decode(best[row, : int(real[row])].tolist()) for row in range(rows)
            ]
    finally:
        model.train(was_training)
    references = tuple(dataset.processor.text(ids) for ids in dataset.labels)
    metrics = error_rates(references, predictions)
    metrics["loss"] = loss_sum / len(dataset)
    audio = tuple(example.media.path if example.media else "" for example in dataset.examples)
    return CtcReport(metrics, references, tuple(predictions), audio)


def speech_results(processor: CtcProcessor) -> dict[str, Any]:
    """The ``speech`` entry of ``results.json`` before any evaluation: the vocabulary (without its tokens)."""
    return {"vocabulary": {k: v for k, v in processor.vocabulary.items() if k != "tokens"}, "samples": []}
