"""End to end: a real `tracklayerd serve` process, killed and stopped under load."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN, auth, purchase
from tests.server import ServerProcess
from tracklayerd.config import parse_config
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.store.sqlite import SQLiteStore

CONFIG = f"""
[sources.web]
type = "http_api"
token = "{TOKEN}"
[storage]
path = "tl.sqlite3"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tracklayerd.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


class Load:
    """Concurrent senders; each remembers which event ids got a 200."""

    def __init__(self, url: str, workers: int = 16, batch_every: int = 4) -> None:
        self.url = url
        self.workers = workers
        self.batch_every = batch_every
        self.acked: list[str] = []
        self.failures = 0
        self.other_status: list[int] = []
        self._stop = False
        self._target = 0
        self._reached = asyncio.Event()

    async def _worker(self, session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not self._stop:
            i += 1
            if i % self.batch_every == 0:
                ids = [f"w{n}-{i}-{k}" for k in range(20)]
                body: dict[str, Any] = {"events": [purchase(x) for x in ids]}
            else:
                ids = [f"w{n}-{i}"]
                body = purchase(ids[0])
            try:
                async with session.post(f"{self.url}/v1/events", json=body,
                                        headers=auth()) as resp:
                    if resp.status == 200:
                        self.acked.extend(ids)
                        if len(self.acked) >= self._target:
                            self._reached.set()
                    else:
                        self.other_status.append(resp.status)
            except (aiohttp.ClientError, OSError):
                self.failures += 1
                if self.failures > self.workers * 3:
                    return
                await asyncio.sleep(0.01)

    async def run_until(self, acked: int, then: Any) -> None:
        """Send until `acked` events got a 200, call `then()`, keep sending until all fail."""
        async with aiohttp.ClientSession() as session:
            self._target = acked
            tasks = [asyncio.create_task(self._worker(session, n)) for n in range(self.workers)]
            await asyncio.wait_for(self._reached.wait(), 60)
            then()
            _, pending = await asyncio.wait(tasks, timeout=20)
            self._stop = True
            await asyncio.gather(*pending)


async def stored_ids(path: Path) -> list[str]:
    store = SQLiteStore(path)
    await store.open()
    try:
        await Processor(store, Pipeline(parse_config({}, Path(".")))).run_until_idle()
        counts = await store.counts()
        assert counts["events"] == counts["inbox"]
        return await store.inbox_message_ids("web")
    finally:
        await store.close()


async def test_sigkill_under_load_loses_no_acknowledged_event(
    tmp_path: Path, config_file: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "data", config_file).start()
    servers.append(server)
    load = Load(server.url)
    await load.run_until(2000, lambda: server.signal(signal.SIGKILL))
    assert server.wait() == -signal.SIGKILL
    assert load.failures > 0  # the kill really happened mid-load

    restarted = ServerProcess(tmp_path / "data", config_file).start()
    servers.append(restarted)
    async with aiohttp.ClientSession() as session, session.post(
        f"{restarted.url}/v1/events", json=purchase("after"), headers=auth()
    ) as resp:
        assert resp.status == 200
    restarted.signal(signal.SIGTERM)
    assert restarted.wait() == 0

    ids = await stored_ids(tmp_path / "data" / "tl.sqlite3")
    assert len(ids) == len(set(ids))  # exactly once
    missing = set(load.acked) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert "after" in ids


async def test_sigterm_under_load_finishes_in_flight_and_exits_0(
    tmp_path: Path, config_file: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "data", config_file).start()
    servers.append(server)
    load = Load(server.url)
    await load.run_until(1000, lambda: server.signal(signal.SIGTERM))
    assert server.wait() == 0
    assert "stopped cleanly" in server.log
    assert "Traceback" not in server.log
    assert set(load.other_status) <= {503}
    ids = await stored_ids(tmp_path / "data" / "tl.sqlite3")
    assert set(load.acked) <= set(ids)
    assert len(ids) == len(set(ids))


async def test_dev_mirror_without_config_accepts_any_token_and_warns(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = ServerProcess(tmp_path / "unused", config=None, cwd=tmp_path).start()
    servers.append(server)
    assert "NO AUTHENTICATION" in server.log
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            async with session.post(f"{server.url}/v1/events", json=purchase(),
                                    headers=headers) as resp:
                assert resp.status == 200
        async with session.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    assert (tmp_path / "tracklayerd-data" / "tracklayerd.sqlite3").exists()
