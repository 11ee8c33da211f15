"""A start that upgrades the store asks systemd for more time (EXTEND_TIMEOUT_USEC) before
the migration runs; a start without one does not."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config
from tests.store.support import create_at
from tracklayerd.app import MIGRATION_START_TIMEOUT_SECS, create_app
from tracklayerd.store import schema


def notifications(sock: socket.socket) -> list[str]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


async def test_an_upgrading_start_extends_systemds_start_timeout(
    tmp_path: Path, aiohttp_client: Any, notify_socket: socket.socket
) -> None:
    config = make_config(tmp_path)
    create_at(Path(config.storage.path), schema.SCHEMA_VERSION - 1)
    await aiohttp_client(create_app(config, tmp_path, start_processor=False))
    assert notifications(notify_socket) == [
        f"EXTEND_TIMEOUT_USEC={MIGRATION_START_TIMEOUT_SECS * 1_000_000}"]


async def test_a_start_without_an_upgrade_does_not(
    tmp_path: Path, aiohttp_client: Any, notify_socket: socket.socket
) -> None:
    config = make_config(tmp_path)
    create_at(Path(config.storage.path), schema.SCHEMA_VERSION)
    await aiohttp_client(create_app(config, tmp_path, start_processor=False))
    assert notifications(notify_socket) == []
