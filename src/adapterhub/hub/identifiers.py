"""The identifier grammar shared by the hub client and server.

::

    identifier := ( "@" OWNER "/" NAME  |  [ TASK "/" ] WORD [ "@" OWNER ] ) [ ":" VERSION ]

``WORD`` is a subtask (data set or domain), a task, or a language code; ``VERSION`` is a positive integer
(``3`` or ``v3``). Examples: ``sentiment/sst-2@ukp``, ``sst-2``, ``sentiment``, ``@ukp/bert-sst2:2``.
Identifiers are always resolved for one model (model type, model name, hidden size): the grammar says what to look
for, the model says which of the matches fit.
Model names are compared by :func:`model_key` (their last path component, lower-cased), on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterhub.hub.errors import InvalidIdentifierError

MAX_IDENTIFIER_LENGTH = 200
SLUG = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
SLUG_RE = re.compile(rf"^{SLUG}$")
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,38}$")
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")
_VERSION_RE = re.compile(r"^[vV]?([0-9]{1,9})$")

FORMS = "'task/subtask@owner', 'subtask', 'task' or '@owner/name', each optionally followed by ':version'"


@dataclass(frozen=True)
class Identifier:
    """A parsed identifier. Exactly one of ``name`` (with ``owner``) or ``word`` is set."""

    text: str
    owner: str | None = None
    name: str | None = None
    task: str | None = None
    word: str | None = None
    version: int | None = None

    @property
    def is_direct(self) -> bool:
        """``@owner/name``: names one adapter outright."""
        return self.name is not None


def _bad(text: str, why: str) -> InvalidIdentifierError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return InvalidIdentifierError(
        f"Invalid adapter identifier {shown!r}: {why}. Use {FORMS}.", code="bad_identifier", status=400
    )


def parse_identifier(text: str) -> Identifier:
    """Parse ``text`` or raise :class:`InvalidIdentifierError` saying what is wrong."""
    if not isinstance(text, str):
        raise _bad(repr(text), "not a string")
    raw = text
    text = text.strip()
    if not text:
        raise _bad(raw, "it is empty")
    if len(text) > MAX_IDENTIFIER_LENGTH:
        raise _bad(text, f"it is longer than {MAX_IDENTIFIER_LENGTH} characters")
    version: int | None = None
    if ":" in text:
        text, _, vtext = text.rpartition(":")
        m = _VERSION_RE.match(vtext)
        if not m:
            raise _bad(raw, f"the version {vtext!r} is not a positive number")
        version = int(m.group(1))
        if version < 1:
            raise _bad(raw, "versions start at 1")
        if ":" in text:
            raise _bad(raw, "it has more than one ':'")
    if text.startswith("@"):
        body = text[1:]
        direct_owner, slash, name = body.partition("/")
        if not slash:
            raise _bad(raw, "'@owner' must be followed by '/name'")
        if not OWNER_RE.match(direct_owner):
            raise _bad(raw, f"{direct_owner!r} is not a valid owner name")
        if not ADAPTER_NAME_RE.match(name):
            raise _bad(raw, f"{name!r} is not a valid adapter name (letters, digits, '_' and '-')")
        return Identifier(text=raw.strip(), owner=direct_owner, name=name, version=version)
    owner = None
    if "@" in text:
        text, _, owner_text = text.partition("@")
        owner = owner_text
        if not OWNER_RE.match(owner_text):
            raise _bad(raw, f"{owner!r} is not a valid owner name")
    task = None
    if "/" in text:
        task, _, text = text.partition("/")
        if not SLUG_RE.match(task):
            raise _bad(raw, f"{task!r} is not a valid task name")
    if not SLUG_RE.match(text):
        raise _bad(raw, f"{text!r} is not a valid task or subtask name")
    return Identifier(text=raw.strip(), owner=owner, task=task, word=text, version=version)


def model_key(model_name: str | None) -> str:
    """Compare model names by their last path component, lower-cased (a local copy of a model matches it)."""
    if not model_name:
        return ""
    return model_name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()
