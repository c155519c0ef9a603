"""Reading raw rows from JSON-lines, CSV and TSV files, keeping each row's line number for error messages."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterFileError, ConfigError

TABLE_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".tsv")


@dataclass(frozen=True)
class Row:
    """One raw row: its values by column and where it came from (1-based line, or row for in-memory data)."""

    number: int
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Table:
    """Raw rows read from one source.

    ``origin`` names the source in messages (a file path, or ``hf dataset 'x', split 'train'``); ``unit`` is
    ``"line"`` for files and ``"row"`` otherwise; ``from_text`` is true for CSV/TSV, whose cells are all strings.
    ``header`` is the source's column names (for JSON lines, every key seen, in first-seen order); a
    :meth:`subset` keeps the header of the whole source.
    """

    origin: str
    rows: tuple[Row, ...]
    unit: str = "line"
    from_text: bool = False
    header: tuple[str, ...] = ()

    @staticmethod
    def of(origin: str, rows: list[Row], unit: str = "line", from_text: bool = False) -> Table:
        """A table whose header is every key of ``rows`` in first-seen order."""
        seen: dict[str, None] = {}
        for row in rows:
            for key in row.values:
                seen.setdefault(key, None)
        return Table(origin, tuple(rows), unit, from_text, tuple(seen))

    def where(self, row: Row) -> str:
        """``<origin>, line 12`` for messages."""
        return f"{self.origin}, {self.unit} {row.number}"

    def subset(self, indices: list[int]) -> Table:
        """A table of the rows at ``indices``, in that order, with the same header."""
        return Table(
            self.origin, tuple(self.rows[i] for i in indices), self.unit, self.from_text, self.header
        )


def read_table(path: Path) -> Table:
    """Read ``path`` (``.jsonl``, ``.csv`` or ``.tsv``, UTF-8) into a :class:`Table`.

    Raises :class:`AdapterFileError` if the file cannot be read and :class:`ConfigError` for an unsupported
    suffix, an empty file, malformed JSON or a row that is not an object (JSONL), or a row with the wrong number
    of fields (CSV/TSV). Every message names the file and the line.
    """
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(
            f"{path}: unsupported data file type {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(TABLE_SUFFIXES)} (JSON lines, comma- or tab-separated with a header row)"
        )
    text = _read_text(path)
    table = _parse_jsonl(path, text) if suffix == ".jsonl" else _parse_delimited(path, text, suffix)
    if not table.rows:
        raise ConfigError(f"{path} is empty (no data rows); fill it with examples or point to another file")
    return table


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AdapterFileError(f"cannot read data file {path}: {error.strerror or error}") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not valid UTF-8 ({error.reason} at byte {error.start}); "
            "re-save the file as UTF-8"
        ) from error


def _parse_jsonl(path: Path, text: str) -> Table:
    rows: list[Row] = []
    # split on "\n" only: str.splitlines would also break inside strings at U+2028, U+0085 and friends
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path}, line {number}, column {error.colno}: malformed JSON ({error.msg}); "
                'each line must be one JSON object such as {"text": "...", "label": "..."}'
            ) from error
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}, line {number}: expected a JSON object, got {type(value).__name__}; "
                'each line must be one JSON object such as {"text": "...", "label": "..."}'
            )
        rows.append(Row(number, value))
    return Table.of(str(path), rows)


def _parse_delimited(path: Path, text: str, suffix: str) -> Table:
    delimiter, separator_name = ("\t", "tabs") if suffix == ".tsv" else (",", "commas")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[Row] = []
    try:
        for cells in reader:
            if not cells or all(not cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if duplicates:
                    raise ConfigError(
                        f"{path}, line {reader.line_num}: duplicate column name(s) {', '.join(duplicates)} in "
                        "the header row; give every column a unique name"
                    )
                continue
            if len(cells) != len(header):
                raise ConfigError(
                    f"{path}, line {reader.line_num}: {len(cells)} field(s) but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain {separator_name}"
                    " or fix the row"
                )
            rows.append(Row(reader.line_num, dict(zip(header, cells))))
    except csv.Error as error:
        raise ConfigError(
            f"{path}, line {reader.line_num}: malformed {suffix[1:].upper()} ({error})"
        ) from error
    return Table(str(path), tuple(rows), from_text=True, header=tuple(header or ()))
