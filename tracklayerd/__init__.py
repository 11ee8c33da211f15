"""tracklayerd: a self-hosted delivery layer for conversion events."""

__version__ = "0.1.0"
