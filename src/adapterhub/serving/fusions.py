"""AdapterFusion weights for ``Fuse(...)`` setups of requests (``--fusion DIR`` of ``adapterhub serve-model``).

A fusion directory (``model.save_adapter_fusion``) names the adapters it fuses and may hold them in
``adapters/<name>/`` (those become servable adapters unless a source of that name is given) and a head. The fusion
weights join the model when a request first uses the ``Fuse`` (single flight, on the model thread, after the fused
adapters are acquired and pinned); evicting any of its adapters drops them (``model.delete_adapter`` removes
every fusion that holds the adapter), and the next request loads them again. A fusion's head, if it has one, is
the head of setups that end with that ``Fuse``; it is kept here, outside the model's store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError, did_you_mean
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.sources import SourceError
from adapterhub.spec.composition import Fuse, Setup, Stack, fuse_blocks


@dataclass(frozen=True)
class FusionSource:
    """``directory`` of a saved fusion of ``adapters``; ``adapter_dirs``: the adapters saved alongside."""

    directory: Path
    adapters: tuple[str, ...]
    adapter_dirs: dict[str, Path]

    @property
    def name(self) -> str:
        return ",".join(self.adapters)


def read_fusion_source(directory: str | Path) -> FusionSource:
    from adapterhub.io.fusion_dir import read_fusion_dir

    record = read_fusion_dir(directory, with_head=False)
    return FusionSource(Path(directory), tuple(record.adapters), dict(record.adapter_dirs))


def _install(model: Any, source: FusionSource) -> Any:
    """On the model thread: load the fusion weights (adapters are in the model) and take out its head."""
    from adapterhub.io.fusion_dir import read_fusion_dir

    head_record = read_fusion_dir(source.directory, with_head=True).head
    model.load_adapter_fusion(source.directory, with_head=True, load_adapters=False, overwrite_ok=True)
    if head_record is None or head_record.name not in model.heads:
        return None
    head = model.heads[head_record.name]
    model.delete_head(head_record.name)
    head.eval()
    return head


def final_fuse(setup: Setup | None) -> Fuse | None:
    """The ``Fuse`` a setup ends with (``Fuse(...)`` or ``Stack(..., Fuse(...))``), else None."""
    if isinstance(setup, Fuse):
        return setup
    if isinstance(setup, Stack):
        return final_fuse(setup.children[-1])
    return None


class FusionRegistry:
    """Known fusions (by ``"a,b,c"``) and the ones in the model now, with their detached heads."""

    def __init__(self, model: Any, *, model_executor: Executor) -> None:
        self.model = model
        self._model_executor = model_executor
        self.sources: dict[str, FusionSource] = {}
        self.heads: dict[str, Any] = {}  # fusions in the model -> head (None without one)
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    def register(self, source: FusionSource) -> None:
        self.sources[source.name] = source

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for key, source in sorted(self.sources.items()):
            head = self.heads.get(key)
            out.append(
                {
                    "setup": f"Fuse({', '.join(source.adapters)})",
                    "source": str(source.directory),
                    "loaded": key in self.heads,
                    "head": None if head is None else str(head.head_type),
                }
            )
        return out

    def forget_adapter(self, name: str) -> None:
        """``name`` is being evicted: the model drops every fusion holding it."""
        for key in [key for key, source in self.sources.items() if name in source.adapters]:
            self.heads.pop(key, None)

    def check_known(self, setup: Setup | None) -> None:
        for fuse in fuse_blocks(setup):
            if fuse.fusion_name not in self.sources:
                known = ", ".join(f"Fuse({k})" for k in sorted(self.sources)) or "none"
                raise UnknownAdapterError(
                    f"No fusion {fuse!r} on this server{did_you_mean(fuse.fusion_name, self.sources)}. "
                    f"Fusions: {known} (serve one with --fusion DIR)."
                )

    async def ensure(self, setup: Setup | None) -> Any:
        """Load the fusions of ``setup`` (its adapters must be pinned); return the head of the ``Fuse`` the setup
        ends with, or None."""
        self.check_known(setup)
        for fuse in fuse_blocks(setup):
            key = fuse.fusion_name
            if key in self.heads:
                continue
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                asyncio.get_running_loop().create_task(self._load(key, pending))
            await asyncio.shield(pending)
        last = final_fuse(setup)
        return None if last is None else self.heads.get(last.fusion_name)

    async def _load(self, key: str, done: asyncio.Future[Any]) -> None:
        run: Callable[[], Any] = lambda: _install(self.model, self.sources[key])  # noqa: E731
        try:
            head = await asyncio.get_running_loop().run_in_executor(self._model_executor, run)
            self.heads[key] = head
            done.set_result(head)
        except Exception as error:
            if isinstance(error, AdapterHubError) and not isinstance(error, SourceError):
                error = SourceError(f"Fusion Fuse({key}) from {self.sources[key].directory}: {error}")
            done.set_exception(error)
            done.exception()
        finally:
            self._inflight.pop(key, None)
