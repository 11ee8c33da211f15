"""A small, flat hierarchy of the errors tracklayerd raises on purpose.

Anything else escaping a component is a bug and is logged as one.
"""


class TracklayerdError(Exception):
    """Base class: an expected failure with a message meant for a human."""


class ConfigError(TracklayerdError):
    """The configuration is invalid; the message names the key path."""


class StartupError(TracklayerdError):
    """tracklayerd cannot start (port taken, store unreadable); the message says why."""


class BadInput(TracklayerdError):
    """Input that can never become valid (maps to a 4xx)."""


class StoreUnavailable(TracklayerdError):
    """The store cannot commit right now (disk full, I/O error, locked): retry later (503)."""


class DestinationError(TracklayerdError):
    """A destination is misconfigured or unreachable; the message says what to do."""
