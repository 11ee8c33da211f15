"""``/metrics`` (docs/metrics.md) and the logging rules of docs/operations.md.

The counters are checked exactly, after a run through the real app: ingest routes, the
processor, the scheduler against a fake Meta that fails once, and a real SQLite file. The
exposition is read with prometheus-client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import TOKEN, auth, make_config, processor_of, purchase, store_of
from tests.fakes.meta import FakeMeta
from tests.server import LISTENING
from tracklayerd import __version__
from tracklayerd.app import SCHEDULER, create_app
from tracklayerd.errors import StoreUnavailable
from tracklayerd.logs import JsonFormatter, setup_logging
from tracklayerd.metrics import scrape_gauges

META_TOKEN = "meta-secret-token"
PIXEL = "1234567890"
APP_TOKEN = "app-token-2"
WRITE_KEY = "seg-write-key"
ADMIN = "admin-secret-9"
EMAIL, PHONE, IP = "ada@example.com", "+1 415 555 0100", "203.0.113.7"
SEGMENT_EMAIL, SEGMENT_IP = "grace@example.org", "198.51.100.23"
# What must never show in the metrics or the logs: personal data in every form the pipeline
# holds it (raw, normalized, hashed as stored and as sent to Meta), client addresses, and
# every secret.
RAW_SENSITIVE = [
    EMAIL, "ada@", "4155550100", "415 555", IP, SEGMENT_EMAIL, SEGMENT_IP,
    TOKEN, APP_TOKEN, WRITE_KEY, META_TOKEN, ADMIN,
]
HASHED = [hashlib.sha256(value.encode()).hexdigest()
          for value in (EMAIL, SEGMENT_EMAIL, "+14155550100", "14155550100")]
SENSITIVE = RAW_SENSITIVE + HASHED


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


def config(tmp_path: Path, meta_url: str, **overrides: Any) -> Any:
    meta = {"type": "meta_capi", "pixel_id": PIXEL, "access_token": META_TOKEN,
            "endpoint": meta_url, "max_batch_events": 10, "backoff_base_secs": 1,
            "events": ["purchase"], "consent": ["marketing"]}
    return make_config(
        tmp_path,
        sources={
            "web": {"type": "http_api", "token": TOKEN},
            "app": {"type": "http_api", "token": APP_TOKEN, "allow": ["purchase"]},
            "shop": {"type": "segment", "write_key": WRITE_KEY},
        },
        destinations={
            "meta": meta,
            # Observe mode: what it would send is stored, never sent.
            "shadow": meta | {"mode": "observe", "consent": []},
        },
        **overrides,
    )


def order(event_id: str, order_id: str, granted: bool = True) -> dict[str, Any]:
    return purchase(event_id, order_id=order_id, timestamp=time.time() - 60,
                    consent={"categories": {"marketing": granted}})


# Without a user agent and page URL, Meta refuses a website event: it is dead-lettered when
# processed (outcome "filtered"), for the observe-mode destination too.
SEGMENT_ORDER = {
    "writeKey": WRITE_KEY, "type": "track", "event": "Order Completed", "userId": "u-77",
    "messageId": "seg-1", "timestamp": "2020-01-01T00:00:00Z",
    "properties": {"order_id": "2001", "total": 50, "currency": "EUR"},
    "context": {"ip": SEGMENT_IP, "traits": {"email": SEGMENT_EMAIL},
                "consent": {"categoryPreferences": {"marketing": True}}},
}


async def scrape(client: TestClient[Any, Any], **headers: str) -> tuple[str, list[Sample]]:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return text, samples


def series(samples: list[Sample], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric: label values (in the given order) → value."""
    found = {tuple(s.labels[label] for label in labels): s.value
             for s in samples if s.name == name}
    return found


async def run_pipeline(
    client: TestClient[Any, Any], fake: FakeMeta, clock: FakeClock, **scrape_headers: str
) -> list[Sample]:
    """Ingest, process, one failed send (Meta answers 500), then the retry; returns what
    /metrics said between the failure and the retry."""
    post = client.post
    batch = {"events": [order("evt-0", "order-0"), order("evt-1", "order-1", granted=False),
                        order("evt-2", "order-2"), {"event": ""}]}
    assert (await post("/v1/events", json=batch, headers=auth())).status == 200
    # The same order again under another event id: a business duplicate.
    assert (await post("/v1/events", json=order("evt-3", "order-0"),
                       headers=auth())).status == 200
    assert (await post("/v1/events", data=b"{not json", headers=auth())).status == 400
    assert (await post("/v1/events", json=order("x", "y"), headers=auth("nope"))).status == 401
    # Not in the app source's allowlist; its name is no canonical name either.
    clicked = {"event": "Button Clicked", "timestamp": time.time(), "user": {"email": EMAIL}}
    assert (await post("/v1/events", json=clicked, headers=auth(APP_TOKEN))).status == 200
    assert (await post("/v1/track", json=SEGMENT_ORDER)).status == 200
    assert (await post("/v1/track", json=SEGMENT_ORDER | {"writeKey": "wrong"})).status == 401

    await processor_of(client).run_until_idle()
    scheduler = client.app[SCHEDULER]
    fake.respond_next(500, b"upstream error")
    await scheduler.run_until_idle()
    clock.t += 30  # the failed deliveries have now waited 30 s
    _, between = await scrape(client, **scrape_headers)
    clock.t += 90  # past the backoff
    await scheduler.run_until_idle()
    return between


async def test_metrics_count_a_run_through_the_real_pipeline_exactly(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    fake = FakeMeta(access_token=META_TOKEN)
    meta_url = str((await aiohttp_server(fake.app)).make_url(f"/v24.0/{PIXEL}/events"))
    clock = FakeClock()
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(config(tmp_path, meta_url), tmp_path, start_processor=False, clock=clock))

    between = await run_pipeline(client, fake, clock)
    assert series(between, "tracklayerd_queue_depth", "destination") == {("meta",): 2.0}
    assert series(between, "tracklayerd_oldest_pending_age_seconds", "destination") == {
        ("meta",): pytest.approx(30.0)}
    assert series(between, "tracklayerd_platform_requests_total", "destination", "status") == {
        ("meta", "500"): 1.0}

    text, samples = await scrape(client)
    assert series(samples, "tracklayerd_ingest_requests_total", "source", "status") == {
        ("web", "200"): 2.0, ("web", "400"): 1.0, ("app", "200"): 1.0, ("shop", "200"): 1.0,
        ("unknown", "401"): 2.0}
    assert series(samples, "tracklayerd_events_total", "source", "event", "status") == {
        ("web", "purchase", "accepted"): 3.0, ("web", "purchase", "duplicate"): 1.0,
        ("app", "other", "dropped"): 1.0, ("shop", "purchase", "accepted"): 1.0}
    assert series(samples, "tracklayerd_deliveries_total", "destination", "outcome") == {
        ("meta", "retry"): 2.0, ("meta", "delivered"): 2.0, ("meta", "rejected"): 0.0,
        ("meta", "suppressed"): 1.0, ("meta", "filtered"): 1.0,
        ("shadow", "observed"): 3.0, ("shadow", "filtered"): 1.0}
    assert series(samples, "tracklayerd_platform_requests_total", "destination", "status") == {
        ("meta", "500"): 1.0, ("meta", "200"): 1.0}
    assert series(samples, "tracklayerd_platform_request_seconds_count", "destination") == {
        ("meta",): 2.0}
    assert len(fake.requests) == 2 and sorted(fake.event_ids) == ["evt-0", "evt-2"]
    # Gauges read at scrape time: the queue is empty again, the circuit closed.
    assert series(samples, "tracklayerd_queue_depth", "destination") == {("meta",): 0.0}
    assert series(samples, "tracklayerd_circuit_state", "destination", "state") == {
        ("meta", "closed"): 1.0, ("meta", "open"): 0.0, ("meta", "half_open"): 0.0,
        ("meta", "paused"): 0.0}
    commits = series(samples, "tracklayerd_commit_seconds_count")
    assert commits[()] >= 4  # ingest, processing, two send outcomes: at least one each
    assert series(samples, "tracklayerd_build_info", "version") == {(__version__,): 1.0}
    assert "process_resident_memory_bytes" in text or sys.platform != "linux"
    for secret in SENSITIVE:
        assert secret not in text


async def test_unknown_names_and_sources_do_not_become_series(
    make_client: Any, tmp_path: Path
) -> None:
    """A sender picks event names, keys and webhook paths: none of it may name a series."""
    client = await make_client(make_config(
        tmp_path, sources={"web": {"type": "http_api", "token": TOKEN},
                           "hook": {"type": "segment_webhook", "authorization": "Basic x"}}))
    names = [f"Custom {i}" for i in range(30)] + [EMAIL]
    events = [{"event": name, "timestamp": time.time()} for name in names]
    assert (await client.post("/v1/events", json={"events": events}, headers=auth())).status == 200
    for path in ("/ingest/" + EMAIL, "/ingest/other-source"):
        assert (await client.post(path, json={})).status == 404
    assert (await client.post("/ingest/hook", json={})).status == 401
    await processor_of(client).run_until_idle()

    text, samples = await scrape(client)
    assert series(samples, "tracklayerd_events_total", "source", "event", "status") == {
        ("web", "other", "accepted"): 31.0}
    assert series(samples, "tracklayerd_ingest_requests_total", "source", "status") == {
        ("web", "200"): 1.0, ("hook", "200"): 0.0, ("hook", "401"): 1.0,
        ("unknown", "404"): 2.0}
    assert EMAIL not in text and "Custom" not in text


async def test_refusals_and_failures_are_counted_with_their_status(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()
    store = store_of(client)
    problems = iter([StoreUnavailable("write queue is full"), RuntimeError("a bug")])

    async def failing_append(*args: Any, **kwargs: Any) -> int:
        raise next(problems)

    monkeypatch.setattr(store, "append_inbox", failing_append)
    for expected in (503, 500):
        response = await client.post("/v1/events", json=order("e", "o"), headers=auth())
        assert response.status == expected
    _, samples = await scrape(client)
    assert series(samples, "tracklayerd_ingest_requests_total", "source", "status") == {
        ("web", "200"): 0.0, ("web", "503"): 1.0, ("web", "500"): 1.0}


async def test_metrics_are_admin_only(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(make_config(tmp_path, server={"admin_token": ADMIN}))
    refused = await client.get("/metrics")
    assert refused.status == 401 and "WWW-Authenticate" in refused.headers
    assert (await client.get("/metrics", headers=auth())).status == 401  # a source token
    assert (await client.get("/metrics", headers=auth("wrong"))).status == 401
    await scrape(client, Authorization=f"Bearer {ADMIN}")
    # Behind a proxy without an admin token nobody is provably local: refused.
    proxied = await make_client(make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1"]}))
    assert (await proxied.get("/metrics")).status == 403


async def test_openmetrics_is_served_when_prometheus_asks_for_it(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


# -- scrape-time gauges on their own --------------------------------------------------------


class Worker:
    def __init__(self, state: str) -> None:
        self._state = state

    def state(self) -> str:
        return self._state


class Workers:
    def __init__(self, **states: str) -> None:
        self.workers = {dest: Worker(state) for dest, state in states.items()}
        self.clock = FakeClock()


class SummaryStore:
    """A store with the proposed queue_summary(): depth and oldest created_at per queue."""

    def __init__(self, summary: Mapping[str, tuple[int, float | None]]) -> None:
        self.summary = dict(summary)

    async def queue_summary(self) -> dict[str, tuple[int, float | None]]:
        return self.summary

    async def inbox_backlog(self, cursor_name: str) -> tuple[int, float | None]:
        assert cursor_name == "processor"
        return 0, None


class BrokenStore:
    async def count_deliveries(self, *args: Any, **kwargs: Any) -> int:
        raise StoreUnavailable("read failed: disk I/O error")


def gauge_values(families: list[Any]) -> dict[tuple[str, ...], float]:
    return {(s.name, *s.labels.values()): s.value for f in families for s in f.samples}


async def test_queue_summary_gives_depth_and_oldest_age_from_the_scheduler_clock() -> None:
    workers = Workers(meta="open", hook="closed")
    now = workers.clock.t
    store = SummaryStore({"meta": (12, now - 90.0)})  # nothing queued for hook
    families = await scrape_gauges(store, workers)  # type: ignore[arg-type]
    values = gauge_values(families)
    assert values[("tracklayerd_queue_depth", "meta")] == 12
    assert values[("tracklayerd_queue_depth", "hook")] == 0
    assert values[("tracklayerd_oldest_pending_age_seconds", "meta")] == pytest.approx(90.0)
    assert values[("tracklayerd_oldest_pending_age_seconds", "hook")] == 0
    assert values[("tracklayerd_circuit_state", "meta", "open")] == 1
    assert values[("tracklayerd_circuit_state", "meta", "closed")] == 0


async def test_a_store_that_cannot_be_read_leaves_out_only_the_queue_gauges() -> None:
    families = await scrape_gauges(BrokenStore(), Workers(meta="closed"))  # type: ignore[arg-type]
    assert [f.name for f in families] == ["tracklayerd_circuit_state"]


# -- logs (docs/operations.md): never PII, tokens or raw IPs -------------------------------


async def test_logs_of_a_full_run_hold_no_personal_data_tokens_or_addresses(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, caplog: Any
) -> None:
    fake = FakeMeta(access_token=META_TOKEN)
    meta_url = str((await aiohttp_server(fake.app)).make_url(f"/v24.0/{PIXEL}/events"))
    # Failures log the most: a refused event, throttling that opens the circuit.
    fake.fail_when_event_id("evt-2", 100, 2804001, message="Invalid parameter")
    clock = FakeClock()
    caplog.set_level(logging.DEBUG)
    cfg = config(tmp_path, meta_url, server={"admin_token": ADMIN})
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(cfg, tmp_path, start_processor=False, clock=clock))
    await run_pipeline(client, fake, clock, Authorization=f"Bearer {ADMIN}")
    for _ in range(3):
        fake.fail_next(4, status=429, is_transient=True, retry_after=30,
                       message="(#4) Application request limit reached")
    await client.post("/v1/events", json=order("evt-9", "order-9"), headers=auth())
    await processor_of(client).run_until_idle()
    for _ in range(3):
        clock.t += 3600
        await client.app[SCHEDULER].run_until_idle()
    await client.get("/metrics", headers=auth("wrong"))
    await client.get("/-/events/1", headers=auth(ADMIN))
    counts = await store_of(client).counts()
    # The failure paths ran: refused by Meta and by the encoder (twice), still throttled.
    assert (counts.get("deliveries.dead"), counts.get("deliveries.retrying")) == (3, 1)

    # Third-party loggers that setup_logging() keeps quiet: aiohttp's access log names the
    # client address, aiosqlite's DEBUG lines carry SQL parameters (see the test below).
    records = [r for r in caplog.records if r.name not in ("aiohttp.access", "aiosqlite")]
    assert any(r.name.startswith("tracklayerd") for r in records)
    for record in records:
        text = record.getMessage() + (caplog.handler.formatter.formatException(record.exc_info)
                                      if record.exc_info else "")
        for secret in [*SENSITIVE, "127.0.0.1"]:
            assert secret not in text, (record.name, text)


def test_debug_logging_keeps_sql_parameters_out() -> None:
    # aiosqlite logs every statement with its parameters (hashed emails and phones, event ids)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("debug", "json")
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_json_log_lines_are_json_objects_one_per_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError('a "quoted"\nmultiline problem')
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("tracklayerd.test", logging.ERROR, __file__, 1,
                               "destination %s: %s", ("meta", "Ümlaut\tand \"quotes\""), exc_info)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "error" and entry["logger"] == "tracklayerd.test"
    assert entry["msg"] == 'destination meta: Ümlaut\tand "quotes"'
    assert "ValueError" in entry["exc"] and entry["ts"].endswith("Z")


async def test_serve_with_json_logs_writes_only_json_lines_and_serves_metrics(
    tmp_path: Path
) -> None:
    """The real command line: `--log-format json` for every line from start to clean stop."""
    config_file = tmp_path / "tracklayerd.toml"
    config_file.write_text(f'[sources.web]\ntype = "http_api"\ntoken = "{TOKEN}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLAYERD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tracklayerd", "--log-format", "json", "--log-level", "debug",
        "serve", "--listen", "127.0.0.1:0", "--config", str(config_file),
        "--data-dir", str(tmp_path),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while not (match := LISTENING.search(lines[-1] if lines else "")):
            line = (await proc.stderr.readline()).decode()
            assert line, "server exited during startup:\n" + "".join(lines)
            lines.append(line)
        url = f"http://{match.group(1)}:{match.group(2)}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/events", json=order("e-1", "o-1"),
                                    headers=auth()) as response:
                assert response.status == 200
            # Scrape until the event is processed, so the processor's logging is in the lines.
            text = ""
            async with asyncio.timeout(15):
                while 'tracklayerd_events_total{event="purchase",source="web",' not in text:
                    async with session.get(f"{url}/metrics") as response:
                        assert response.status == 200
                        text = await response.text()
        assert 'tracklayerd_ingest_requests_total{source="web",status="200"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    lines += rest.decode().splitlines(keepends=True)
    entries = [json.loads(line) for line in lines]
    assert all(set(e) >= {"ts", "level", "logger", "msg"} for e in entries)
    assert entries[-1]["msg"] == "stopped cleanly"
    for secret in RAW_SENSITIVE:  # hashes: see test_debug_logging_keeps_sql_parameters_out
        assert secret not in "".join(lines)


async def test_the_processing_backlog_and_its_age_are_gauges(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(make_config(tmp_path))
    _, samples = await scrape(client)
    assert series(samples, "tracklayerd_inbox_backlog") == {(): 0.0}
    assert series(samples, "tracklayerd_processing_lag_seconds") == {(): 0.0}

    before = time.time()
    for i in range(3):
        event = purchase(f"b-{i}")
        assert (await client.post("/v1/events", json=event, headers=auth())).status == 200
    _, samples = await scrape(client)
    assert series(samples, "tracklayerd_inbox_backlog") == {(): 3.0}
    (lag,) = series(samples, "tracklayerd_processing_lag_seconds").values()
    assert 0.0 <= lag <= time.time() - before

    assert await processor_of(client).run_until_idle() == 3
    _, samples = await scrape(client)
    assert series(samples, "tracklayerd_inbox_backlog") == {(): 0.0}
    assert series(samples, "tracklayerd_processing_lag_seconds") == {(): 0.0}
