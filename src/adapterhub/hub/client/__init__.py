"""Client of the hub: resolve identifiers for a model, download into a verified content-addressed cache, publish.

Only the standard library (plus ``filelock``, which transformers already needs) is used, so loading adapters by
name does not need the server's dependencies. This module only gathers the client's functions under one name
(``from adapterhub.hub import client``); each lives in the submodule its job names:

* :mod:`~adapterhub.hub.client.settings`: hub URL, offline mode, cache folder, the stored API token (``login``)
* :mod:`~adapterhub.hub.client.transport`: HTTP requests and the hub's errors
* :mod:`~adapterhub.hub.client.cache`: the content-addressed cache and verified downloads
* :mod:`~adapterhub.hub.client.compatibility`: the check that a downloaded adapter fits the local model
* :mod:`~adapterhub.hub.client.fetch`: ``resolve``, ``resolve_to_local_dir``, ``download_adapter``, ``search``,
  ``info``
* :mod:`~adapterhub.hub.client.publish`: ``push_adapter_dir``, ``whoami``

Environment:
  ``ADAPTERHUB_HUB_URL``   the hub (default ``http://127.0.0.1:8765``)
  ``ADAPTERHUB_CACHE``     cache folder (default ``~/.cache/adapterhub``)
  ``ADAPTERHUB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) use only the cache
  ``ADAPTERHUB_TOKEN``     API token for publishing (else the one ``adapterhub login`` stored)
"""

from __future__ import annotations

from adapterhub.hub.client.cache import cached_adapter_dir, ensure_cached
from adapterhub.hub.client.fetch import (
    download_adapter,
    info,
    iter_cached,
    resolve,
    resolve_to_local_dir,
    search,
)
from adapterhub.hub.client.publish import push_adapter_dir, whoami
from adapterhub.hub.client.settings import (
    DEFAULT_HUB_URL,
    cache_dir,
    hub_url_from,
    is_offline,
    login,
    stored_token,
    token_file,
)
from adapterhub.hub.client.transport import TIMEOUT
from adapterhub.hub.errors import HubError

__all__ = [
    "DEFAULT_HUB_URL",
    "TIMEOUT",
    "HubError",
    "cache_dir",
    "cached_adapter_dir",
    "download_adapter",
    "ensure_cached",
    "hub_url_from",
    "info",
    "is_offline",
    "iter_cached",
    "login",
    "push_adapter_dir",
    "resolve",
    "resolve_to_local_dir",
    "search",
    "stored_token",
    "token_file",
    "whoami",
]
