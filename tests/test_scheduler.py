"""The scheduler against a real store and a real (fake-platform) HTTP server.

The platform here is a minimal JSON API scripted per test; the platform-specific fakes
(Meta, webhook) have their own suites. A FakeClock drives time: no sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from tracklayerd.config import DestinationConfig, parse_config
from tracklayerd.destinations.base import (
    Delivered,
    Encoded,
    HttpClient,
    Limits,
    Outcome,
    Rejected,
    Request,
    outcome_for_status,
)
from tracklayerd.destinations.registry import registry
from tracklayerd.events import Event
from tracklayerd.processor import Pipeline, Processor
from tracklayerd.scheduler import Scheduler
from tracklayerd.store.base import InboxRow
from tracklayerd.store.sqlite import SQLiteStore

NOW = time.time()


class FakeClock:
    """Starts at the real time: the store stamps new deliveries with it."""

    def __init__(self, now: float | None = None) -> None:
        self.t = time.time() if now is None else now

    def now(self) -> float:
        return self.t

    def advance(self, secs: float) -> None:
        self.t += secs


class ToyConfig(DestinationConfig, kw_only=True):
    max_events: int = 10
    max_bytes: int | None = None
    max_age_secs: float | None = None


class Toy:
    """A platform taking {"batch": [{"id": ...}, ...]}; it answers {"results": [...]}."""

    def __init__(self, dest_id: str, config: ToyConfig, environment: Any) -> None:
        self.id = dest_id
        self.config = config
        self.limits = Limits(max_events=config.max_events, max_bytes=config.max_bytes,
                             max_age_secs=config.max_age_secs)
        self._http = HttpClient(concurrency=config.concurrency,
                                timeout_secs=config.timeout_secs, user_agent="test")

    def encode(self, event: Event, consent: Any = None) -> Encoded:
        if event.properties.get("unsendable"):
            return Encoded(rejected="toy refuses unsendable events")
        pad = event.properties.get("pad")
        return Encoded(payload=msgspec.json.encode(
            {"id": event.event_id, **({"pad": pad} if pad else {})}))

    def build_request(self, payloads: Sequence[bytes]) -> Request:
        assert self.config.endpoint is not None
        return Request(url=self.config.endpoint, body=b'{"batch":[' + b",".join(payloads) + b"]}")

    async def send(self, payloads: Sequence[bytes]) -> Sequence[Outcome]:
        reply = await self._http.send(self.build_request(payloads))
        if reply.status == 400 and "bad_event" in reply.body:
            return [Rejected(reason=reply.body, whole_batch=True, reply=reply)] * len(payloads)
        if reply.status != 200:
            return [outcome_for_status(reply, f"HTTP {reply.status}")] * len(payloads)
        return [Delivered(reply=reply)] * len(payloads)

    async def healthcheck(self) -> None:
        pass

    async def close(self) -> None:
        await self._http.close()


@pytest.fixture(scope="module", autouse=True)
def toy_type() -> None:
    if registry().config_type("toy") is None:
        registry().register("toy", ToyConfig, factory=Toy)


class Platform:
    """The fake platform: records every batch; answers from a script, then 200."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.sizes: list[int] = []  # request body bytes, of each accepted batch
        self.script: list[tuple[int, dict[str, str]]] = []
        self.bad: set[str] = set()
        self.hang = False
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        ids = [item["id"] for item in (await request.json())["batch"]]
        if self.hang:
            await asyncio.Event().wait()
        if self.bad & set(ids):
            return web.json_response({"error": "bad_event"}, status=400)
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response({"error": "scripted"}, status=status, headers=headers)
        self.batches.append(ids)
        self.sizes.append(len(await request.read()))
        self.changed.set()
        return web.json_response({"ok": True, "n": len(ids)})

    def received(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


async def start_platform(aiohttp_server: Any) -> tuple[Platform, str]:
    platform = Platform()
    app = web.Application()
    app.router.add_post("/events", platform.handle)
    server = await aiohttp_server(app)
    return platform, str(server.make_url("/events"))


class Rig:
    def __init__(self, tmp_path: Path, destinations: dict[str, dict[str, Any]],
                 clock: FakeClock) -> None:
        self.config = parse_config({
            "sources": {"web": {"type": "http_api", "token": "t"}},
            "destinations": destinations,
        }, tmp_path)
        self.store = SQLiteStore(tmp_path / "tl.sqlite3")
        from tracklayerd.destinations.registry import create_destinations

        self.destinations = create_destinations(self.config)
        self.clock = clock
        self.scheduler = Scheduler(self.store, list(self.destinations.values()), clock=clock,
                                   rng=random.Random(7))
        self.processor = Processor(self.store, Pipeline(self.config, self.destinations),
                                   clock=clock.now)
        self.seq = 0

    async def add(self, n: int, **properties: Any) -> None:
        rows = []
        for _ in range(n):
            self.seq += 1
            body = {"event": "purchase", "event_id": f"e{self.seq}", "value": 1.0,
                    "currency": "EUR", "order_id": f"o{self.seq}", "timestamp": self.clock.t,
                    "properties": properties}
            rows.append(InboxRow(source="web", message_id=f"e{self.seq}", kind="native",
                                 received_at=self.clock.t, payload=msgspec.json.encode(body)))
        await self.store.append_inbox(rows)
        await self.processor.run_until_idle()

    async def statuses(self, destination: str) -> dict[str, int]:
        counts = await self.store.counts()
        del destination
        return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("deliveries.")}

    async def records(self, event_row: int) -> Any:
        return await self.store.delivery_records(event_row)


@pytest.fixture
async def rig_factory(tmp_path: Path) -> Any:
    rigs: list[Rig] = []

    async def make(destinations: dict[str, dict[str, Any]]) -> Rig:
        rig = Rig(tmp_path, destinations, FakeClock())
        await rig.store.open()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.scheduler.stop(grace=0)
        await rig.store.close()


def toy(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "toy", "endpoint": url, **options}


async def test_requests_stay_within_the_platforms_byte_limit(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_events=10, max_bytes=300)})
    await rig.add(7, pad="x" * 40)  # {"id":"eN","pad":"xxx…"}: ~60 bytes each
    await rig.add(1, pad="y" * 400)  # alone it is over the limit: the platform would refuse
    await rig.add(2, pad="z" * 40)
    assert await rig.scheduler.run_until_idle() == 10
    assert platform.received() == ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e9", "e10"]
    assert all(size <= 300 for size in platform.sizes)
    assert len(platform.batches) == 3  # 4 + 4 + 1 fit; 10 events would not
    assert await rig.statuses("p") == {"delivered": 9, "dead": 1}
    (record,) = await rig.records(8)
    assert record.status == "dead"
    assert "over the platform's 300 bytes per request" in (record.reason or "")
    assert [a.outcome for a in record.history] == ["filtered"]


async def test_due_deliveries_go_out_in_batches_within_the_platform_limit(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_events=10)})
    await rig.add(25)
    assert await rig.scheduler.run_until_idle() == 25
    assert [len(b) for b in platform.batches] == [10, 10, 5]
    assert sorted(platform.received()) == sorted(f"e{i}" for i in range(1, 26))
    assert await rig.statuses("p") == {"delivered": 25}
    record = (await rig.records(1))[0]
    assert record.status == "delivered" and record.attempts == 1
    assert [(a.outcome, a.http_status) for a in record.history] == [("delivered", 200)]
    assert record.history[0].response is not None and '"n": 10' in record.history[0].response


async def test_a_server_error_is_retried_with_backoff_and_the_same_event_id(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, backoff_base_secs=10, backoff_max_secs=100)})
    await rig.add(1)
    platform.script = [(500, {}), (503, {})]
    await rig.scheduler.run_until_idle()
    record = (await rig.records(1))[0]
    assert record.status == "retrying" and record.reason == "HTTP 500"
    first_wait = record.next_attempt_at - rig.clock.t
    assert 5 <= first_wait <= 10  # base * 2^0 with jitter in [0.5, 1]
    # Not due yet: nothing is sent.
    assert await rig.scheduler.run_until_idle() == 0
    rig.clock.advance(first_wait)
    await rig.scheduler.run_until_idle()
    record = (await rig.records(1))[0]
    assert record.status == "retrying" and 10 <= record.next_attempt_at - rig.clock.t <= 20
    rig.clock.advance(20)
    await rig.scheduler.run_until_idle()
    record = (await rig.records(1))[0]
    assert record.status == "delivered" and record.attempts == 3
    assert [a.outcome for a in record.history] == ["retry", "retry", "delivered"]
    assert platform.received() == ["e1"]


async def test_retry_after_is_honoured_and_pauses_the_destination(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_events=1)})
    await rig.add(2)
    platform.script = [(429, {"Retry-After": "120"})]
    await rig.scheduler.run_until_idle()
    first = (await rig.records(1))[0]
    assert first.status == "retrying" and first.next_attempt_at == pytest.approx(rig.clock.t + 120)
    # Rate-limited: the second event is not tried either until the pause is over.
    assert (await rig.records(2))[0].status == "pending"
    assert rig.scheduler.workers["p"].state() == "paused"
    rig.clock.advance(121)
    await rig.scheduler.run_until_idle()
    assert sorted(platform.received()) == ["e1", "e2"]


async def test_one_bad_event_in_a_batch_is_isolated_and_the_rest_delivered(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_events=8)})
    await rig.add(8)
    platform.bad = {"e5"}
    await rig.scheduler.run_until_idle()
    assert sorted(platform.received()) == sorted(f"e{i}" for i in range(1, 9) if i != 5)
    bad = (await rig.records(5))[0]
    assert bad.status == "dead" and "bad_event" in (bad.reason or "")
    assert bad.history[0].outcome == "split"
    assert await rig.statuses("p") == {"delivered": 7, "dead": 1}
    # log2(8) + 1 levels: 1 + 2 + 2 + 2 requests, not one per event.
    assert rig.scheduler.workers["p"].stats.requests == 7


async def test_still_failing_at_the_retry_horizon_is_a_dead_letter_with_the_last_reason(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, retry_horizon_secs=3600, backoff_base_secs=600,
                                      backoff_max_secs=600, breaker_failures=1000)})
    await rig.add(1)
    platform.script = [(502, {})] * 100
    for _ in range(20):
        await rig.scheduler.run_until_idle()
        rig.clock.advance(600)
    record = (await rig.records(1))[0]
    assert record.status == "dead"
    assert record.reason is not None and record.reason.startswith("gave up after")
    assert record.reason.endswith("HTTP 502")
    assert platform.received() == []
    assert record.attempts == len(record.history) <= 9


async def test_events_the_platform_would_refuse_for_the_whole_batch_are_filtered_first(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_age_secs=7 * 86400, max_events=10)})
    await rig.add(3)
    rig.clock.advance(8 * 86400)  # the platform was down for 8 days; the first 3 are too old
    await rig.add(2)
    await rig.scheduler.run_until_idle()
    assert sorted(platform.received()) == ["e4", "e5"]
    old = (await rig.records(1))[0]
    assert old.status == "dead" and "days ago" in (old.reason or "")
    assert old.attempts == 0 and old.history[0].outcome == "filtered"


async def test_unsendable_events_are_dead_at_processing_and_never_sent(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url)})
    await rig.add(1, unsendable=True)
    await rig.add(1)
    await rig.scheduler.run_until_idle()
    assert platform.received() == ["e2"]
    dead = (await rig.records(1))[0]
    assert dead.status == "dead" and dead.reason == (
        "rejected before sending: toy refuses unsendable events")


async def test_observe_mode_stores_the_payload_and_sends_nothing(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, mode="observe")})
    await rig.add(3)
    assert await rig.scheduler.run_until_idle() == 0
    assert platform.received() == []
    record = (await rig.records(2))[0]
    assert record.status == "observed" and record.payload == b'{"id":"e2"}'


async def test_a_crash_mid_send_resends_the_same_bytes_after_the_lease_expires(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url)})
    await rig.add(2)
    worker = rig.scheduler.workers["p"]
    leased = await worker.lease()  # ...and the process dies before recording anything
    assert [d.payload for d in leased] == [b'{"id":"e1"}', b'{"id":"e2"}']
    assert await rig.scheduler.run_until_idle() == 0  # leased: not due
    rig.clock.advance(worker.lease_secs + 1)
    assert await rig.scheduler.run_until_idle() == 2
    assert platform.received() == ["e1", "e2"]


async def test_the_circuit_opens_after_repeated_failures_and_a_probe_closes_it(
    rig_factory: Any, aiohttp_server: Any
) -> None:
    platform, url = await start_platform(aiohttp_server)
    rig = await rig_factory({"p": toy(url, max_events=1, breaker_failures=3,
                                      breaker_cooldown_secs=60, backoff_base_secs=1)})
    await rig.add(5)
    platform.script = [(500, {})] * 3
    await rig.scheduler.run_until_idle()
    worker = rig.scheduler.workers["p"]
    assert worker.state() == "open"
    assert worker.stats.requests == 3  # the other two events were not tried
    rig.clock.advance(30)
    assert await rig.scheduler.run_until_idle() == 0
    rig.clock.advance(31)
    assert worker.state() == "half_open"
    await rig.scheduler.run_until_idle()
    assert worker.state() == "closed"
    assert sorted(platform.received()) == [f"e{i}" for i in range(1, 6)]


async def test_a_hanging_destination_does_not_delay_a_healthy_one(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    down, down_url = await start_platform(aiohttp_server)
    up, up_url = await start_platform(aiohttp_server)
    down.hang = True
    config = parse_config({
        "sources": {"web": {"type": "http_api", "token": "t"}},
        "destinations": {
            "down": toy(down_url, timeout_secs=30, batch_linger_secs=0, max_events=1),
            "up": toy(up_url, batch_linger_secs=0, max_events=1),
        },
    }, tmp_path)
    from tracklayerd.destinations.registry import create_destinations

    store = SQLiteStore(tmp_path / "tl.sqlite3")
    await store.open()
    destinations = create_destinations(config)
    scheduler = Scheduler(store, list(destinations.values()))
    processor = Processor(store, Pipeline(config, destinations), on_processed=scheduler.wake)
    try:
        scheduler.start()
        for i in range(1, 6):
            body = {"event": "purchase", "event_id": f"e{i}", "value": 1.0, "currency": "EUR"}
            await store.append_inbox([InboxRow(
                source="web", message_id=f"e{i}", kind="native", received_at=NOW,
                payload=msgspec.json.encode(body))])
        await processor.run_until_idle()
        # Every event reaches the healthy platform while the other holds its requests.
        async with asyncio.timeout(10):
            while len(up.received()) < 5:
                await up.changed.wait()
                up.changed.clear()
        assert sorted(up.received()) == [f"e{i}" for i in range(1, 6)]
        assert down.received() == []
    finally:
        await scheduler.stop(grace=0)
        await store.close()
    # The hanging requests were given back, not lost: they are due again.
    store = SQLiteStore(tmp_path / "tl.sqlite3")
    await store.open()
    try:
        counts = await store.counts()
        assert counts.get("deliveries.delivered") == 5
        assert counts.get("deliveries.pending", 0) + counts.get("deliveries.retrying", 0) == 5
    finally:
        await store.close()
