"""Business deduplication across sources: one purchase is one purchase. Pure.

The inbox already drops a retried message (same source and message id). This step catches the
same conversion arriving twice by different routes: a shop's server and a Segment webhook
both sending "Order Completed" for order 1001, or an SDK retrying with a new message id but
the same explicit event id. Orders (purchase, refund) are keyed by order id, other events by
event id; a repeat within the window is recorded as a duplicate of the first and delivered
nowhere. The key includes the canonical name, so a refund never collides with its purchase.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from tracklayerd.events import Event


class DedupPolicy(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    # Canonical events deduplicated by order id (others by event id).
    order_events: frozenset[str] = frozenset({"purchase", "refund"})
    order_window_secs: float = 7 * 86400.0
    event_window_secs: float = 48 * 3600.0


class Seen(msgspec.Struct, frozen=True, kw_only=True):
    """The first event that claimed a key."""

    event_row: int
    source: str
    seen_at: float  # unix seconds it was received


class Duplicate(msgspec.Struct, frozen=True, kw_only=True):
    of: Seen
    key: str
    reason: str


def dedup_key(event: Event, policy: DedupPolicy) -> str | None:
    """The business key of an event, or None when it is not deduplicated."""
    if not policy.enabled:
        return None
    if event.event in policy.order_events and event.order_id:
        return f"{event.event}\x1forder\x1f{event.order_id.strip()}"
    return f"{event.event}\x1fevent\x1f{event.event_id}"


def window_of(key: str, policy: DedupPolicy) -> float:
    return policy.order_window_secs if "\x1forder\x1f" in key else policy.event_window_secs


def check(key: str, received_at: float, seen: Seen | None, policy: DedupPolicy
          ) -> Duplicate | None:
    """A Duplicate when `seen` claimed the key within its window before this event."""
    if seen is None or received_at - seen.seen_at > window_of(key, policy):
        return None
    name, kind, value = key.split("\x1f", 2)
    what = f"order {value}" if kind == "order" else f"event id {value}"
    when = datetime.fromtimestamp(seen.seen_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Duplicate(of=seen, key=key, reason=(
        f"duplicate of event #{seen.event_row} from source {seen.source} ({name}, {what}, "
        f"first received {when})"))
