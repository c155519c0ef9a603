"""Speech recognition rows: ``{"audio": "clips/0.wav", "text": "hello world"}``, an audio file and its transcript,
read into the examples of a ``ctc`` task (:class:`~adapterhub.data.task.TaskData` with ``kind="ctc"``).

Rows with an ``audio`` and a text column and no label column are transcripts (the kind is inferred as ``ctc``),
as are audio rows given ``kind="ctc"``. Each row's WAV file is checked as for audio classification
(:func:`adapterhub.data.media.media_of`: it exists and its header reads as audio, :mod:`adapterhub.data.audio`:
WAV of any common sample format, or FLAC, Ogg, MP3, ... through soundfile); its transcript must be a non-empty
string, stored with whitespace runs collapsed to one space and the ends stripped (:func:`normalize_transcript`),
so that the words of a transcript are ``text.split(" ")``. A bad row raises :class:`ConfigError` naming the data
file and line. Whether each character is in the model's vocabulary is checked where the vocabulary is known
(:mod:`adapterhub.training.ctc`).

Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable

from adapterhub.data.media import media_of
from adapterhub.data.tables import Table
from adapterhub.data.task import Example
from adapterhub.errors import ConfigError

AUDIO_COLUMN = "audio"


def is_transcript_header(header: Iterable[str], text_column: str, label_column: str) -> bool:
    """True when rows with these columns are speech transcripts: an ``audio`` and a text column, no label."""
    columns = set(header)
    return AUDIO_COLUMN in columns and text_column in columns and label_column not in columns


def normalize_transcript(text: str) -> str:
    """``text`` with every run of whitespace made one space and the ends stripped."""
    return " ".join(text.split())


def transcript_examples(table: Table, text_column: str) -> tuple[Example, ...]:
    """The ``ctc`` examples of ``table``: ``Example(text=<transcript>, media=<audio>)`` per row, in order."""
    examples = []
    for row in table.rows:
        where = table.where(row)
        value = row.values.get(text_column)
        if not isinstance(value, str) or not value.strip():
            got = "nothing" if value is None or value == "" else f"{type(value).__name__} {value!r}"[:80]
            raise ConfigError(
                f"{where}: no transcript in column {text_column!r} (got {got}); every row of a speech "
                f'recognition (ctc) task needs "{text_column}": "<what is said>" (fill it in or remove the row)'
            )
        examples.append(Example(normalize_transcript(value), media=media_of(table, row, "audio")))
    return tuple(examples)
