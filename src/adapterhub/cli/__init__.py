"""The cli layer, the highest: the command-line entry point ``adapterhub <command> ...``, the demo (``demo``) and
the cross-cutting commands (``composition``: fusion heatmaps and setups; ``merge``). It may import every layer.

Each feature area owns its sub-commands in its own module, which exposes ``register(subparsers)``; this file only
collects them. A user mistake is reported as one line on stderr (exit code 2), never as a traceback; so is a command
that needs a package this installation lacks (torch where only the light ``adapterhub-hub`` distribution is
installed). A command module imports torch and transformers inside its handlers only, so ``adapterhub --help`` and
the hub commands start without them (tests/hub/test_light_imports.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from adapterhub.errors import AdapterHubError

# Modules that contribute sub-commands. A module that is not part of this installation is skipped.
COMMAND_MODULES: tuple[str, ...] = (
    "adapterhub.cli.demo",
    "adapterhub.data.cli",
    "adapterhub.training.cli",
    "adapterhub.training.compare_cli",
    "adapterhub.cli.composition",
    "adapterhub.cli.merge",
    "adapterhub.hub.cli",
    "adapterhub.serving.cli",
    "adapterhub.export.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapterhub",
        description="Train, compose, evaluate and share adapters for transformers models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except AdapterHubError as error:
        print(f"adapterhub {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (
        ModuleNotFoundError
    ) as error:  # e.g. `adapterhub train` where only adapterhub-hub (no torch) is installed
        missing = (error.name or "").split(".")[0]
        if not missing or missing == "adapterhub":
            raise
        print(
            f"adapterhub {args.command}: error: this command needs the package {missing!r}, which is not "
            f"installed here. Install the full library (pip install adapterhub) or that package; the "
            f"adapterhub-hub distribution has the hub and the CLI's hub commands only.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
