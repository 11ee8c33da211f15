"""Shared fixtures: real SQLite files in tmp_path, real aiohttp servers on port 0."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tracklayerd.app import PROCESSOR, STORE, create_app
from tracklayerd.config import Config, parse_config
from tracklayerd.processor import Processor
from tracklayerd.store.sqlite import SQLiteStore

TOKEN = "test-token-1"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """A config with one authenticated http_api source `web`; tables in overrides replace."""
    data: dict[str, Any] = {
        "sources": {"web": {"type": "http_api", "token": TOKEN}},
        "storage": {"path": str(tmp_path / "tl.sqlite3")},
    }
    for key, value in overrides.items():
        data[key] = value
    return parse_config(data, tmp_path)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def store_of(client: TestClient[Any, Any]) -> SQLiteStore:
    store = client.app[STORE]
    assert isinstance(store, SQLiteStore)
    return store


def processor_of(client: TestClient[Any, Any]) -> Processor:
    return client.app[PROCESSOR]


@pytest.fixture
def make_client(
    aiohttp_client: Any, tmp_path: Path
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """Start tracklayerd's app (processor driven by the test) on a real server, port 0."""

    async def factory(config: Config | None = None) -> TestClient[Any, Any]:
        app = create_app(config or make_config(tmp_path), tmp_path, start_processor=False)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return factory


def purchase(event_id: str = "ord-1-purchase", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "purchase",
        "event_id": event_id,
        "timestamp": "2026-11-20T10:00:00Z",
        "user": {"email": "ada@example.com", "phone": "+1 415 555 0100"},
        "order_id": "1001",
        "value": 129.9,
        "currency": "USD",
        "items": [{"id": "sku-1", "price": 64.95, "quantity": 2}],
        "context": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "page_url": "https://x.example/"},
    }
    event.update(fields)
    return event


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI points the root logger at click's captured stderr, which closes after the
    run: put the test session's logging back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@contextlib.contextmanager
def left_to_the_collector() -> Iterator[list[str]]:
    """Yields a list that, after the block, names the requests and exceptions that only the
    garbage collector would have freed (held in reference cycles). tracklayerd raises the
    collector's threshold (tracklayerd/memory.py), which is only safe while requests free
    themselves when answered."""
    gc.collect()
    gc.disable()
    held: list[str] = []
    try:
        yield held
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        held.extend(type(o).__name__ for o in gc.garbage
                    if isinstance(o, web.BaseRequest | BaseException))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
