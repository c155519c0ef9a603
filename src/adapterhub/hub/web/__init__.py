"""The hub website, served by the registry server's process.

:func:`mount` is the hook :func:`adapterhub.hub.server.app.create_app` calls (``web=True``); ``mount_web`` is the
same function under a longer name. The pages are server-rendered Jinja2 templates with a little vanilla JavaScript
(copy buttons, the snippet's model field); see ``docs/hub.md`` for the page map.
"""

from __future__ import annotations

from adapterhub.hub.web.routes import mount, mount_web

__all__ = ["mount", "mount_web"]
