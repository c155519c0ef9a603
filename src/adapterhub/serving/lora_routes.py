"""Run-time adapter routes of ``serve-model``: vLLM's ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``, and ``POST`` / ``DELETE /v1/compositions`` (all need ``Authorization: Bearer TOKEN`` when the server has a token).

- load ``{"lora_name": NAME, "lora_path": SOURCE}``: registers NAME from SOURCE (a directory, a hub identifier or
  ``hf:owner/repo``) and loads it at once; answers 200 ``text/plain``
  ``Success: LoRA adapter 'NAME' added successfully.`` as vLLM does. A name already served answers 400 (unless
  ``"load_inplace": true``, which replaces it: its running requests finish first); a source that cannot load
  answers 400 (``param`` ``lora_path``) and leaves nothing behind. Any method the server can load is accepted,
  not only LoRA.
- unload ``{"lora_name": NAME}``: forgets and evicts NAME (after the requests that use it end); 200
  ``Success: LoRA adapter 'NAME' removed successfully.``; an unknown name answers 404 (``model_not_found``).

Compositions at run time: ``POST /v1/compositions`` ``{"name": NAME, "setup": "Stack(a, b)"}`` serves the setup
under NAME (``compositions``; a block the engine cannot mix per row answers 400 naming the ones it can);
``DELETE /v1/compositions/NAME`` stops serving it.

After a load the adapter is in ``/v1/models`` (with its weights ``hash``) and ``model`` can name it; after an
unload, ``model`` naming it answers 404 ``model_not_found``. Errors are in OpenAI's shape (``openai_errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from adapterhub.errors import ConfigError
from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.openai_errors import openai_error
from adapterhub.serving.sources import SourceError

LORA_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadLoraBody(_Body):
    lora_name: str = Field(..., min_length=1, description="the name `model` will use")
    lora_path: str = Field(..., min_length=1, description="directory, hub identifier or hf:owner/repo")
    load_inplace: bool = Field(False, description="replace an adapter already served under this name")


class CompositionBody(_Body):
    name: str = Field(..., min_length=1, description="the name `model` will use")
    setup: str = Field(..., min_length=1, description="e.g. Stack(a, b) or Average(a, b) of served adapters")


class UnloadLoraBody(_Body):
    lora_name: str = Field(..., min_length=1)
    lora_int_id: int | None = Field(None, description="accepted for vLLM clients; ignored")


def lora_router(engine: ServingEngine, require_token: Callable[..., None]) -> APIRouter:
    """vLLM's load/unload routes over ``engine`` (see the module docstring)."""
    router = APIRouter(dependencies=[Depends(require_token)])

    @router.post("/v1/load_lora_adapter", summary="vLLM: add and load an adapter at run time")
    async def load_lora(body: LoadLoraBody) -> Any:
        name = body.lora_name
        if name == engine.model_id:
            return openai_error(
                400, f"The name {name!r} is the base model's id; choose another lora_name.",
                param="lora_name", code="invalid_value",
            )  # fmt: skip
        if name in engine.registry.sources and not body.load_inplace:
            return openai_error(
                400,
                f"The lora adapter '{name}' has already been loaded. Unload it first, or send "
                '"load_inplace": true to replace it.',
                param="lora_name",
                code="invalid_value",
            )
        try:
            await engine.add_adapter(name, body.lora_path, load=True)
        except (SourceError, ConfigError) as error:
            return _load_failed(name, error)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @router.post("/v1/unload_lora_adapter", summary="vLLM: forget and evict an adapter")
    async def unload_lora(body: UnloadLoraBody) -> Any:
        name = body.lora_name
        if name not in engine.registry.sources:
            return openai_error(
                404, f"The lora adapter '{name}' cannot be found.", param="lora_name", code="model_not_found"
            )
        await engine.remove_adapter(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @router.post("/v1/compositions", summary="serve a composition of served adapters under a name")
    async def add_composition(body: CompositionBody) -> dict[str, Any]:
        return engine.add_composition(body.name, body.setup)

    @router.delete("/v1/compositions/{name}", summary="stop serving a composition")
    async def remove_composition(name: str) -> dict[str, Any]:
        engine.compositions.remove(name)
        return {"deleted": name}

    return router


def _load_failed(name: str, error: Exception) -> JSONResponse:
    return openai_error(
        400, f"Loading lora adapter '{name}' failed: {error}", param="lora_path", code="invalid_value"
    )
