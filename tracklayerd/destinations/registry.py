"""The destination registry: built-ins register exactly like a third-party package would.

A third-party package exposes an entry point in the group ``tracklayerd.destinations`` that
names a callable taking the :class:`Registry`; it calls :meth:`Registry.register` for each type.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracklayerd.config import DestinationConfig

ENTRY_POINT_GROUP = "tracklayerd.destinations"
BUILTIN_PLUGINS = ("tracklayerd.destinations.webhook",)


class Registry:
    def __init__(self) -> None:
        self._config_types: dict[str, type[DestinationConfig]] = {}
        self._platforms: dict[str, str] = {}

    def register(
        self, type_name: str, config_type: type[DestinationConfig], platform: str | None = None
    ) -> None:
        """Add a destination type. `platform` names the identity rules and match-quality
        weights it uses ("meta", "google", ...; see pipeline/quality.py); None for none."""
        if type_name in self._config_types:
            raise ValueError(f"destination type {type_name!r} is registered twice")
        self._config_types[type_name] = config_type
        if platform is not None:
            self._platforms[type_name] = platform

    def platform(self, type_name: str) -> str | None:
        return self._platforms.get(type_name)

    def config_type(self, type_name: str) -> type[DestinationConfig] | None:
        return self._config_types.get(type_name)

    def types(self) -> list[str]:
        return sorted(self._config_types)


_registry: Registry | None = None


def registry() -> Registry:
    global _registry
    if _registry is None:
        import importlib

        reg = Registry()
        for module_name in BUILTIN_PLUGINS:
            importlib.import_module(module_name).register(reg)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()(reg)
        _registry = reg
    return _registry


def destination_platform(type_name: str) -> str | None:
    return registry().platform(type_name)


def destination_config_type(type_name: str) -> type[DestinationConfig] | None:
    return registry().config_type(type_name)
