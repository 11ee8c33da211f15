"""Helpers shared by the store's tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tracklayerd.store import schema


def create_at(path: Path, version: int) -> None:
    """An empty store at schema `version`, as that release of tracklayerd created it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for number in range(1, version + 1):
        for statement in schema._statements(schema.MIGRATIONS[number - 1]):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("COMMIT")
    conn.close()
