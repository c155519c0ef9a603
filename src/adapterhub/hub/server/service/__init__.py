"""The hub's logic, independent of HTTP: accounts and tokens, taxonomy, the adapter catalog and search, resolve.

This module only gathers the service functions under one name (``from adapterhub.hub.server import service``);
each lives in the submodule its job names:

* :mod:`~adapterhub.hub.server.service.helpers`: error constructors, name suggestions, config presets, error
  payloads
* :mod:`~adapterhub.hub.server.service.accounts`: users, organisations, memberships and API tokens
* :mod:`~adapterhub.hub.server.service.taxonomy`: tasks, subtasks and languages
* :mod:`~adapterhub.hub.server.service.catalog`: looking up, describing, searching and indexing adapters
* :mod:`~adapterhub.hub.server.service.resolving`: resolving an identifier for one model

Functions take a SQLAlchemy session and raise :class:`adapterhub.hub.errors.HubError` subclasses with an HTTP
status and a machine-readable code; :mod:`adapterhub.hub.server.app` turns them into JSON error responses. The
website (``adapterhub.hub.web``) calls these functions too. Publishing is :mod:`adapterhub.hub.server.publish`.
"""

from __future__ import annotations

from adapterhub.hub.identifiers import model_key
from adapterhub.hub.server.service.accounts import (
    add_member,
    authenticate,
    create_owner,
    create_token,
    get_owner,
    hash_token,
    may_publish,
    membership_role,
    require_admin,
    require_owner,
    require_publisher,
)
from adapterhub.hub.server.service.catalog import (
    adapter_detail,
    adapter_summary,
    archive_path,
    check_identity,
    count_download,
    model_index,
    model_types,
    qualified,
    require_adapter,
    require_version,
    search,
    short_form,
    stats,
    version_dict,
    versions_of,
)
from adapterhub.hub.server.service.helpers import (
    HEX_RE,
    MODEL_TYPE_RE,
    TOKEN_PREFIX,
    close_matches,
    config_label,
    hub_error_payload,
    invalid,
    not_found,
    preset_hash,
    preset_hashes,
)
from adapterhub.hub.server.service.resolving import resolve
from adapterhub.hub.server.service.taxonomy import (
    create_language,
    create_subtask,
    create_task,
    get_task,
    list_languages,
    list_tasks,
    require_language,
    require_subtask,
    require_task,
    seed_taxonomy,
    subtask_dict,
    task_dict,
)

__all__ = [
    "HEX_RE",
    "MODEL_TYPE_RE",
    "TOKEN_PREFIX",
    "adapter_detail",
    "adapter_summary",
    "add_member",
    "archive_path",
    "authenticate",
    "check_identity",
    "close_matches",
    "config_label",
    "count_download",
    "create_language",
    "create_owner",
    "create_subtask",
    "create_task",
    "create_token",
    "get_owner",
    "get_task",
    "hash_token",
    "hub_error_payload",
    "invalid",
    "list_languages",
    "list_tasks",
    "may_publish",
    "membership_role",
    "model_index",
    "model_key",
    "model_types",
    "not_found",
    "preset_hash",
    "preset_hashes",
    "qualified",
    "require_adapter",
    "require_admin",
    "require_language",
    "require_owner",
    "require_publisher",
    "require_subtask",
    "require_task",
    "require_version",
    "resolve",
    "search",
    "seed_taxonomy",
    "short_form",
    "stats",
    "subtask_dict",
    "task_dict",
    "version_dict",
    "versions_of",
]
