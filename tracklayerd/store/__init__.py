"""Storage behind one interface (:class:`tracklayerd.store.base.Store`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tracklayerd.config import StorageConfig
from tracklayerd.store.base import Store
from tracklayerd.store.sqlite import SQLiteStore


def create_store(
    storage: StorageConfig, data_dir: Path,
    on_migrating: Callable[[int, int], None] | None = None,
) -> Store:
    """The configured store. `on_migrating(from, to)` is called before a schema upgrade."""
    path = Path(storage.path)
    if not path.is_absolute():
        path = data_dir / path
    return SQLiteStore(
        path,
        synchronous=storage.synchronous,
        busy_timeout_ms=storage.busy_timeout_ms,
        max_pending_rows=storage.max_pending_events,
        checkpoint_rows=storage.checkpoint_rows,
        max_db_bytes=storage.max_db_bytes,
        on_migrating=on_migrating,
    )
