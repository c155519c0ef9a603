"""The subset of the Hugging Face Hub HTTP API that ``huggingface_hub`` uses to read and write model repos, served
over the hub's adapters (docs/hub.md, "Hugging Face Hub file API of our hub"). ``mount(app)`` adds its routes."""

from __future__ import annotations

from fastapi import FastAPI

from adapterhub.hub.server.hf_api.read_routes import router as read_router
from adapterhub.hub.server.hf_api.write_routes import router as write_router


def mount(app: FastAPI) -> None:
    """Add the Hub file API's routes to ``app`` (whose ``state.hub`` is the hub)."""
    app.include_router(read_router)
    app.include_router(write_router)
