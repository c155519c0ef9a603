"""Batches of image and audio rows (:mod:`adapterhub.data.media`) for the training loop and ``evaluate``.

An image batch carries ``pixel_values`` (batch, channels, height, width) and ``labels``; an audio batch carries
``input_values`` (batch, samples), zero-padded to its longest row, its ``attention_mask`` (batch, samples) and
``labels``. The model maps the sample mask to its frames (wav2vec2's convolutions shorten the input), and the
flexible heads pool over the real frames only (``adapterhub.runtime.head_inputs.frame_mask``); audio tasks pool
with ``mean`` unless told otherwise. The model's own preprocessing
is used when its folder has one (``preprocessor_config.json``: ``AutoImageProcessor`` /
``AutoFeatureExtractor``); otherwise images are resized to the config's ``image_size`` (bilinear), scaled to
[0, 1] and normalised with mean 0.5 and std 0.5 per channel, ``x' = (x - 0.5) / 0.5``, and audio is normalised
to zero mean and unit variance per row, ``x' = (x - mean) / sqrt(var + 1e-7)``, at the 16 kHz wav2vec2 was
trained on. A clip at another rate than the processor's is resampled first (:mod:`adapterhub.data.resample`:
windowed sinc, ``ceil(N · new / old)`` samples); stereo clips are read as the mean of their channels; every format
:mod:`adapterhub.data.audio` reads (WAV of any common sample format, FLAC, Ogg, MP3, ...) is resampled alike.
:attr:`MediaProcessor.description` says which, for the run's output.

The :class:`MediaProcessor` takes the tokenizer's place in the loop (``make_loader(..., collate_fn=collate_media)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from adapterhub.data.audio import read_audio
from adapterhub.data.media import read_image
from adapterhub.data.resample import resample
from adapterhub.data.task import Example, Media
from adapterhub.errors import ConfigError

PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_SAMPLING_RATE = 16_000
FALLBACK_MEAN_STD = 0.5


@dataclass(frozen=True)
class MediaProcessor:
    """Turns one row's file into the model input: ``kind`` ``"image"`` (``pixel_values`` (3, H, W)) or ``"audio"``
    (``input_values`` (samples,)). ``transform`` is the model's processor (called on one image or one waveform)
    or ``None`` for the fallback; ``size`` (height, width) and ``sampling_rate`` are what the model expects."""

    kind: str
    description: str
    transform: Callable[..., Any] | None = None
    size: tuple[int, int] = (224, 224)
    sampling_rate: int = DEFAULT_SAMPLING_RATE

    @property
    def input_name(self) -> str:
        return "pixel_values" if self.kind == "image" else "input_values"

    def __call__(self, media: Media) -> torch.Tensor:
        if media.kind != self.kind:
            raise ConfigError(f"{media.where}: a {media.kind} row given to the {self.kind} preprocessing")
        return self._image(media) if self.kind == "image" else self._audio(media)

    def _image(self, media: Media) -> torch.Tensor:
        image = read_image(media)
        if self.transform is not None:
            return self.transform(images=[image], return_tensors="pt")["pixel_values"][0].float()  # (3, H, W)
        import numpy as np

        height, width = self.size
        resized = image.resize((width, height), resample=_bilinear())
        array = np.asarray(resized, dtype=np.float32) / 255.0  # (H, W, 3)
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
        return (pixels - FALLBACK_MEAN_STD) / FALLBACK_MEAN_STD

    def _audio(self, media: Media) -> torch.Tensor:
        samples, rate = read_audio(media)
        if rate != self.sampling_rate:  # band-limited windowed-sinc resampling to the model's rate
            waveform = torch.from_numpy(samples.copy())  # (samples,)
            samples = resample(waveform, rate, self.sampling_rate).numpy()  # (ceil(samples · new / rate),)
            rate = self.sampling_rate
        if self.transform is not None:
            out = self.transform(samples, sampling_rate=rate, return_tensors="pt")
            return out["input_values"][0].float()  # (samples,)
        values = torch.from_numpy(samples.copy())  # (samples,)
        return (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + 1e-7)


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


def load_media_processor(source: str | os.PathLike[str] | None, config: Any, kind: str) -> MediaProcessor:
    """The preprocessing for ``kind`` rows on a model whose folder is ``source`` (or hub name) and whose config is
    ``config``: the folder's ``preprocessor_config.json`` when present, else the fallback described above."""
    folder = Path(source).expanduser() if source else None
    if folder is not None and (folder / PREPROCESSOR_FILE).is_file():
        return _from_pretrained(folder, config, kind)
    where = f"no {PREPROCESSOR_FILE} in {folder}" if folder is not None else "no model folder"
    if kind == "image":
        channels = getattr(config, "num_channels", None)
        size = getattr(config, "image_size", None)
        if channels != 3 or size is None:
            raise ConfigError(
                f"image rows need an RGB image model (config num_channels 3 and image_size); "
                f"{type(config).__name__} has num_channels={channels}, image_size={size}. Use a ViT-like model, "
                f"or add its {PREPROCESSOR_FILE} (save its image processor with save_pretrained)."
            )
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return MediaProcessor(
            "image",
            f"{where}: images resized to {height}x{width} (bilinear, from config.image_size), scaled to [0, 1] "
            "and normalised with mean 0.5, std 0.5",
            size=(int(height), int(width)),
        )
    if kind == "audio":
        return MediaProcessor(
            "audio",
            f"{where}: mono at {DEFAULT_SAMPLING_RATE} Hz (channels averaged, other rates resampled), each row "
            "normalised to zero mean and unit variance",
        )
    raise ConfigError(f"unknown media kind {kind!r}; use image or audio")


def _from_pretrained(folder: Path, config: Any, kind: str) -> MediaProcessor:
    import transformers

    try:
        if kind == "image":
            processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
        else:
            processor = transformers.AutoFeatureExtractor.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load the {kind} processor in {folder}: {error}") from None
    name = type(processor).__name__
    if kind == "image":
        return MediaProcessor("image", f"{name} from {folder / PREPROCESSOR_FILE}", transform=processor)
    rate = int(getattr(processor, "sampling_rate", DEFAULT_SAMPLING_RATE))
    return MediaProcessor(
        "audio",
        f"{name} from {folder / PREPROCESSOR_FILE} ({rate} Hz)",
        transform=processor,
        sampling_rate=rate,
    )


class MediaDataset(Dataset[dict[str, Any]]):
    """Image or audio examples, decoded when an item is read: item ``i`` is ``{input_name: tensor, "labels":
    label}`` with the label as :func:`adapterhub.data.encode` gives it (an ``int`` for classification, a
    ``float`` for regression, a multi-hot list of ``num_labels`` floats for multilabel; absent when
    unlabelled)."""

    def __init__(
        self, examples: Sequence[Example], processor: MediaProcessor, kind: str, num_labels: int
    ) -> None:
        for example in examples:
            if example.media is None or example.media.kind != processor.kind:
                got = "text" if example.media is None else example.media.kind
                raise ConfigError(f"a {processor.kind} data set got a {got} row: {example!r}"[:300])
        self.examples = tuple(examples)
        self.processor = processor
        self.kind = kind
        self.num_labels = num_labels

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        assert example.media is not None
        item: dict[str, Any] = {self.processor.input_name: self.processor(example.media)}
        label = example.label
        if label is None:
            return item
        if self.kind == "multilabel":
            hot = [0.0] * self.num_labels
            for i in label:  # type: ignore[union-attr]
                hot[i] = 1.0
            item["labels"] = hot
        else:
            item["labels"] = label
        return item


def collate_media(items: Sequence[dict[str, Any]], processor: Any = None) -> dict[str, torch.Tensor]:
    """Stack a batch: ``pixel_values`` (batch, 3, H, W), or ``input_values`` (batch, longest) zero-padded at the
    end with ``attention_mask`` (batch, longest), 1 on a row's own samples, 0 on its padding (the model masks the
    padded frames out of attention, and pooling heads average over the real frames only); ``labels`` (batch,)
    long for class indices, float for regression, (batch, classes) float for multilabel. Labels go in only when
    every item has one."""
    batch: dict[str, torch.Tensor] = {}
    if "pixel_values" in items[0]:
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
    else:
        longest = max(item["input_values"].shape[0] for item in items)
        values = torch.zeros(len(items), longest)  # (batch, samples)
        mask = torch.zeros(len(items), longest, dtype=torch.long)  # (batch, samples): 1 = a real sample
        for row, item in enumerate(items):
            values[row, : item["input_values"].shape[0]] = item["input_values"]
            mask[row, : item["input_values"].shape[0]] = 1
        batch["input_values"] = values
        batch["attention_mask"] = mask
    if all("labels" in item for item in items):
        labels = [item["labels"] for item in items]
        dtype = torch.long if isinstance(labels[0], int) else torch.float
        batch["labels"] = torch.tensor(labels, dtype=dtype)
    return batch


def media_datasets(
    task: Any, processor: MediaProcessor
) -> tuple[MediaDataset, MediaDataset, Callable[..., dict[str, torch.Tensor]]]:
    """``(train, dev, collate_media)`` for a task of image or audio rows."""
    return (
        MediaDataset(task.train, processor, task.kind, task.num_labels),
        MediaDataset(task.dev, processor, task.kind, task.num_labels),
        collate_media,
    )


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """Rows in a text, image or audio batch."""
    for key in ("input_ids", "pixel_values", "input_values", "labels"):
        if key in batch:
            return int(batch[key].shape[0])
    raise ConfigError(f"a batch with none of input_ids, pixel_values, input_values: {sorted(batch)}")


def load_media_base(model_path: str | None, media: str) -> tuple[Any, MediaProcessor, str]:
    """``(model, processor, path)``: the base model of a model directory or hub name via ``AutoModel`` (ViTModel,
    Wav2Vec2Model, ...) and its :class:`MediaProcessor` for ``media`` rows."""
    import transformers

    if not model_path:
        raise ConfigError(
            f"{media} rows need an {media} model: pass --model <folder> (e.g. a ViT for images, a wav2vec2 for "
            "audio); the default text encoder cannot read them"
        )
    local = Path(model_path).expanduser()
    if (os.sep in model_path or model_path.startswith(".")) and not local.is_dir():
        raise ConfigError(f"--model {model_path}: no such directory.")
    source = str(local) if local.is_dir() else model_path
    try:
        model = transformers.AutoModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot load the model {model_path!r}: {first}") from None
    processor = load_media_processor(local if local.is_dir() else None, model.config, media)
    return model, processor, str(local.resolve()) if local.is_dir() else model_path


def media_loader(examples: Sequence[Example], task: Any, processor: MediaProcessor, batch_size: int) -> Any:
    """An unshuffled loader of ``examples`` (image or audio rows of ``task``) for evaluation; prints which
    preprocessing it uses to stderr."""
    import sys

    from torch.utils.data import DataLoader

    if not isinstance(processor, MediaProcessor):
        raise ConfigError(
            f"{task.media} rows need the model's {task.media} preprocessing, got {type(processor).__name__}; "
            "was the run trained on text?"
        )
    print(f"{task.media} preprocessing: {processor.description}", file=sys.stderr)
    dataset = MediaDataset(examples, processor, task.kind, task.num_labels)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_media)
