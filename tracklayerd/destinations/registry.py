"""The destination registry: built-ins register exactly like a third-party package would.

A third-party package exposes an entry point in the group ``tracklayerd.destinations`` that
names a callable taking the :class:`Registry`; it calls :meth:`Registry.register` for each type.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracklayerd.config import Config, DestinationConfig
    from tracklayerd.destinations.base import Destination, Environment

    Factory = Callable[[str, Any, Environment], Destination]

from tracklayerd.errors import ConfigError

ENTRY_POINT_GROUP = "tracklayerd.destinations"
BUILTIN_PLUGINS = ("tracklayerd.destinations.webhook", "tracklayerd.destinations.meta_capi")


class Registry:
    def __init__(self) -> None:
        self._config_types: dict[str, type[DestinationConfig]] = {}
        self._platforms: dict[str, str] = {}
        self._factories: dict[str, Factory] = {}

    def register(
        self, type_name: str, config_type: type[DestinationConfig], platform: str | None = None,
        factory: Factory | None = None,
    ) -> None:
        """Add a destination type. `platform` names the identity rules and match-quality
        weights it uses ("meta", "google", ...; see pipeline/quality.py); None for none.
        `factory(destination_id, config, environment)` makes the Destination (see
        destinations/base.py); a type without one is validated and scored, never sent."""
        if type_name in self._config_types:
            raise ValueError(f"destination type {type_name!r} is registered twice")
        self._config_types[type_name] = config_type
        if platform is not None:
            self._platforms[type_name] = platform
        if factory is not None:
            self._factories[type_name] = factory

    def factory(self, type_name: str) -> Factory | None:
        return self._factories.get(type_name)

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
            try:
                ep.load()(reg)
            except Exception as exc:
                # A broken plugin is a startup error with its name, not a traceback.
                raise ConfigError(f"destination plugin {ep.name!r} ({ep.value}) failed to "
                                  f"load: {type(exc).__name__}: {exc}") from exc
        _registry = reg
    return _registry


def destination_platform(type_name: str) -> str | None:
    return registry().platform(type_name)


def destination_can_send(type_name: str) -> bool:
    """Whether the type registered a factory (a Destination that sends)."""
    return registry().factory(type_name) is not None


def destination_config_type(type_name: str) -> type[DestinationConfig] | None:
    return registry().config_type(type_name)


def create_destination(
    destination_id: str, config: DestinationConfig, environment: Environment
) -> Destination | None:
    """The destination for a configured id; None when its type cannot send."""
    factory = registry().factory(config.type)
    return None if factory is None else factory(destination_id, config, environment)


def create_destinations(config: Config) -> dict[str, Destination]:
    """Every configured destination that can send (mode off included: replay may use it)."""
    from tracklayerd import __version__
    from tracklayerd.destinations.base import Environment

    environment = Environment(default_region=config.identity.default_region,
                              user_agent=f"tracklayerd/{__version__}")
    made = {
        dest_id: create_destination(dest_id, dest, environment)
        for dest_id, dest in config.destinations.items()
    }
    return {dest_id: dest for dest_id, dest in made.items() if dest is not None}
