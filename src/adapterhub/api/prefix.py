"""Model API for prefix tuning: ``model.eject_prefix(name)``."""

from __future__ import annotations

from adapterhub.api.adapters import AdapterAPIMixin
from adapterhub.errors import ConfigError
from adapterhub.methods.prefix_tuning import PrefixTuningAdapter


class PrefixTuningMixin(AdapterAPIMixin):
    def eject_prefix(self, name: str) -> None:
        """Replace the reparametrisation MLP of prefix-tuning adapter ``name`` by the prefix it computes (same
        outputs, far fewer parameters; its config becomes ``flat=True``). For inference and saving; training then
        continues on the flat prefix."""
        module = self._require_adapter(name)
        if not isinstance(module, PrefixTuningAdapter):
            raise ConfigError(f"Adapter {name!r} is a {module.method} adapter, not a prefix-tuning adapter.")
        module.eject()
        self._store.changed()
