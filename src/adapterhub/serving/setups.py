"""Setup strings of requests: ``"Stack(lang, task)"``, ``"Fuse(a, b, c)"``, ``'Stack("lang", Fuse(a, b))'``.

Names may be bare (``rt-pfeiffer``, as adapter names allow ``-``) or quoted; blocks are those of
``adapterhub.spec.composition``. A plain name is a setup of one adapter.
"""

from __future__ import annotations

import re

from adapterhub.errors import ConfigError
from adapterhub.spec.composition import BatchSplit, Block, Parallel, Setup, normalize_setup, parse_setup

_BLOCKS = ("Stack", "Fuse", "Split", "BatchSplit", "Parallel", "Average")
_WORD = re.compile(r"(\"[^\"]*\"|'[^']*')|([A-Za-z0-9][A-Za-z0-9_\-]*(?:\.[0-9]+)?)")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def parse_request_setup(text: str) -> Setup:
    """Parse a request's ``setup`` string into a normalised setup (``ConfigError`` when it is not one)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("setup must be a non-empty string such as 'Stack(lang, task)'.")
    text = text.strip()
    if _NAME.fullmatch(text):
        return text

    def quote(match: re.Match[str]) -> str:
        word = match.group(2)
        if word is None or word in _BLOCKS or word in ("True", "False", "None") or _NUMBER.fullmatch(word):
            return match.group(0)
        if text[match.end() :].lstrip().startswith(("(", "=")):
            return word  # a call or a keyword argument: left for the parser to judge
        return repr(word)

    setup = normalize_setup(parse_setup(_WORD.sub(quote, text)))
    if setup is None:
        raise ConfigError(f"setup {text!r} names no adapter.")
    _check_served(setup, text)
    return setup


def _check_served(setup: Setup, text: str) -> None:
    """The server puts each request's rows in a ``BatchSplit`` itself and returns one output per row, so a request
    cannot ask for ``BatchSplit`` (rows of its own) or ``Parallel`` (several outputs per row)."""
    if isinstance(setup, (BatchSplit, Parallel)):
        raise ConfigError(
            f"setup {text!r}: {type(setup).__name__} is not served (the server splits batches itself and returns "
            "one output per input); send one request per adapter or setup."
        )
    if isinstance(setup, Block):
        for child in setup.children:
            _check_served(child, text)
