"""Compositions served by name: ``serve-model --composition NAME=SETUP`` or ``POST /v1/compositions`` at run time.

A composition names a setup of served adapters (``Stack(a, b)``, ``Average(a, b)``, parsed by the project's setup
parser, ``setups.parse_request_setup``); OpenAI requests pick it with ``model`` as they pick an adapter. The
generation engine runs each sequence's setup on its own rows inside the step's ``BatchSplit``, so a composition
decodes in the same batches as plain adapters. Per row it mixes adapter names and ``Stack`` / ``Average`` of them
(``GENERATION_BLOCKS``) over adapters of the methods it runs per row (``gen_checks.MIXABLE_METHODS``); ``Fuse``,
``Split``, ``Parallel`` and ``BatchSplit`` are refused when the composition is registered (``ConfigError``: 400)
with that list. A composition is generated with the model's LM head, or with its last adapter's causal-LM head
when that adapter was saved with one.
"""

from __future__ import annotations

from typing import Any

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.serving.setups import parse_request_setup
from adapterhub.spec.composition import Average, Block, Setup, Stack, setup_names

GENERATION_BLOCKS = (Stack, Average)


def check_generation_setup(setup: Setup, text: str) -> None:
    """Raise ``ConfigError`` unless ``setup`` is a name or ``Stack`` / ``Average`` blocks of names and of each other."""
    if isinstance(setup, str):
        return
    if not isinstance(setup, GENERATION_BLOCKS):
        blocks = ", ".join(b.__name__ for b in GENERATION_BLOCKS)
        raise ConfigError(
            f"Composition {text!r}: the generation engine mixes per row adapter names and {blocks} of them, not "
            f"{type(setup).__name__}. Rewrite it with {blocks} only, or generate with model.generate() and the "
            "setup active."
        )
    for child in setup.children:
        if child is None:
            raise ConfigError(f"Composition {text!r}: every member must name an adapter.")
        check_generation_setup(child, text)


class CompositionRegistry:
    """Name -> setup of the compositions a server serves (``names()``, ``get``, ``register``, ``remove``)."""

    def __init__(self) -> None:
        self.setups: dict[str, Setup] = {}
        self.texts: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted(self.setups)

    def get(self, name: str) -> Setup | None:
        return self.setups.get(name)

    def register(self, name: str, text: str, *, taken: dict[str, str], known: list[str]) -> Setup:
        """Parse ``text`` and serve it as ``name``. ``taken``: names used by something else (name -> what it is);
        ``known``: the adapters the server knows (every member must be one)."""
        from adapterhub.heads.api import check_name

        check_name(name)
        if name in taken:
            raise ConfigError(
                f"The name {name!r} is taken by {taken[name]}; choose another composition name."
            )
        setup = parse_request_setup(text)
        if not isinstance(setup, Block):
            raise ConfigError(
                f"Composition {text!r} is one adapter; name it with model={setup!r} directly, or compose "
                "several with Stack(a, b) or Average(a, b)."
            )
        check_generation_setup(setup, text)
        for member in setup_names(setup):
            if member not in known:
                raise ConfigError(
                    f"Composition {text!r} names {member!r}{did_you_mean(member, known)}, which this server does "
                    f"not serve (adapters: {', '.join(sorted(known)) or 'none'}); add it first."
                )
        self.setups[name] = setup
        self.texts[name] = repr(setup)
        return setup

    def remove(self, name: str) -> None:
        if name not in self.setups:
            raise ConfigError(
                f"No composition named {name!r}{did_you_mean(name, self.setups)}; compositions: "
                f"{', '.join(self.names()) or 'none'}."
            )
        del self.setups[name], self.texts[name]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "setup": self.texts[n], "adapters": setup_names(self.setups[n])} for n in self.names()
        ]
