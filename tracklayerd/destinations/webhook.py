"""Signed webhook destination: POSTs canonical events as JSON to an endpoint you own.

Configuration only for now; delivery lands with the scheduler (see docs/destinations/webhook.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracklayerd.config import DestinationConfig
from tracklayerd.secrets import Secret

if TYPE_CHECKING:
    from tracklayerd.destinations.registry import Registry


class WebhookConfig(DestinationConfig, kw_only=True):
    endpoint: str
    # HMAC-SHA256 key for the X-Tracklayerd-Signature header.
    secret: Secret | None = None


def register(registry: Registry) -> None:
    registry.register("webhook", WebhookConfig)
