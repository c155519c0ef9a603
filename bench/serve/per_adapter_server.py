"""Baseline (b) of bench/serve/bench.py: our server, batching requests as usual, but running one forward pass per
adapter per tick (the requests of a tick grouped by adapter, each group its own pass, back to back) instead of one
BatchSplit pass for all of them. Takes the arguments of ``adapterhub serve-model``:

    .venv/bin/python bench/serve/per_adapter_server.py --model DIR --adapter NAME=DIR ... --port P
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from adapterhub.serving.cli import config_from_args, register
from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.passes import Work, run_batch


class PerAdapterEngine(ServingEngine):
    """``ServingEngine`` whose scheduler tick runs one pass per setup instead of one BatchSplit pass."""

    async def _run_works(self, works: Sequence[Work]) -> list[Any]:
        groups: dict[Any, list[int]] = {}
        for i, work in enumerate(works):
            groups.setdefault(work.setup, []).append(i)
        results: list[Any] = [None] * len(works)
        loop = asyncio.get_running_loop()
        for indices in groups.values():
            part = [works[i] for i in indices]
            answers = await loop.run_in_executor(self._model_thread, run_batch, self.model, part, self.pad_id)
            for i, answer in zip(indices, answers, strict=True):
                results[i] = answer
        return results


def main() -> None:
    import uvicorn

    from adapterhub.serving.app import create_app

    parser = argparse.ArgumentParser(description=__doc__)
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-model", *sys.argv[1:]])
    adapters, config = config_from_args(args)
    engine = PerAdapterEngine.from_pretrained(
        args.model, adapters=adapters, config=config, device=args.device
    )
    app = create_app(engine, preload=args.preload, title="serve-model, one pass per adapter per tick")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")  # as serve-model: the same access log)


if __name__ == "__main__":
    main()
