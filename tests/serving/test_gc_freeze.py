"""``gc_freeze`` (``serve-model`` by default, ``--no-gc-freeze`` off): when the app has started, the loaded model
and the preloaded adapters are in the permanent generation, out of the cyclic collector's scans; the shutdown
gives them back; the server still answers."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
import pytest

from adapterhub.errors import ConfigError
from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine


def _serve(directory: Any, adapter: Any, gc_freeze: bool) -> dict[str, Any]:
    """Start the app (adapter preloaded), look at the collector while it serves one completion, shut it down."""

    async def main() -> dict[str, Any]:
        config = EngineConfig(max_wait_ms=1, gc_freeze=gc_freeze)
        engine = ServingEngine.from_pretrained(str(directory), adapters={"lm": str(adapter)}, config=config)
        app = create_app(engine, preload=True)
        async with app.router.lifespan_context(app):
            model = engine.model
            objects = [*model.modules(), *model.parameters()]  # the model's own and the adapter's
            assert "lm" in engine.registry.loaded
            scanned = {id(o) for o in gc.get_objects()}  # what a full collection walks (not the frozen)
            seen = {
                "objects": len(objects),
                "frozen": gc.get_freeze_count(),
                "scanned": sum(id(o) in scanned for o in objects),
            }
            del scanned
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                body = {"model": "lm", "prompt": "the movie was", "max_tokens": 4, "temperature": 0}
                reply = await client.post("/v1/completions", json=body)
            seen["status"] = reply.status_code
        seen["frozen_after"] = gc.get_freeze_count()
        seen["scanned_after"] = sum(any(o is x for x in gc.get_objects()) for o in objects[:3])
        return seen

    gc.unfreeze()  # nothing frozen before: what is frozen below is the start-up's
    try:
        return asyncio.run(main())
    finally:
        gc.unfreeze()


def test_start_up_freezes_the_model_out_of_the_collector_and_shutdown_gives_it_back(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    seen = _serve(directory, adapter, gc_freeze=True)
    assert seen["status"] == 200
    assert seen["scanned"] == 0  # every module and parameter (the adapter's too) is frozen
    assert seen["frozen"] >= seen["objects"] > 0
    assert seen["frozen_after"] == 0 and seen["scanned_after"] == 3


def test_gc_freeze_off_leaves_the_collector_alone(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    seen = _serve(directory, adapter, gc_freeze=False)
    assert seen["status"] == 200
    assert seen["frozen"] == 0 and seen["scanned"] == seen["objects"]


def test_serve_model_freezes_unless_no_gc_freeze(tiny_gpt2_dir):
    from adapterhub.cli import build_parser
    from adapterhub.serving.cli import config_from_args

    directory, adapter = tiny_gpt2_dir
    argv = ["serve-model", "--model", str(directory), "--adapter", f"lm={adapter}"]
    assert config_from_args(build_parser().parse_args(argv))[1].gc_freeze is True
    assert config_from_args(build_parser().parse_args([*argv, "--no-gc-freeze"]))[1].gc_freeze is False
    assert EngineConfig().gc_freeze is False  # the library's default: an app embedded elsewhere is left alone
    with pytest.raises(ConfigError, match="gc_freeze must be True or False"):
        EngineConfig(gc_freeze="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"valid: .*gc_freeze"):
        EngineConfig.from_dict({"gc_freez": True})
