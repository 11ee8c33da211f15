"""Delivery throughput: a pre-filled inbox to a fake Meta Conversions API, against a bare client.

Run from the repository root (it uses the fake Meta Graph API from tests/fakes)::

    .venv/bin/python contrib/bench/delivery.py                 # rates, 100k events
    .venv/bin/python contrib/bench/delivery.py --drain 1000000 # + the backlog drain and RSS

The sink is the test suite's fake Meta (it validates every event as Meta documents: hashes,
times, fields) in its own process, forgetting what it received so it stays small. Measured in
the same run, against the same sink:

* bare: an aiohttp client posting pre-built 1,000-event bodies (no store, no pipeline), with
  the same number of requests in flight as tracklayerd's destination (its concurrency);
* delivery: tracklayerd's scheduler draining already-processed deliveries (lease, send,
  record each outcome), i.e. the delivery engine alone;
* end to end: inbox → processor (decode, map, identity, hashing, payload) → scheduler → sink,
  all running at once as in `tracklayerd serve`;
* drain (--drain N): `tracklayerd serve` started on a store holding N unprocessed events;
  time until every delivery is delivered, and the serve process's peak RSS (VmHWM).

Figures are printed; nothing is asserted. Loopback and plain HTTP: an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracklayerd.config import Config, parse_config  # noqa: E402
from tracklayerd.destinations.registry import create_destinations  # noqa: E402
from tracklayerd.events import from_native, native_decoder  # noqa: E402
from tracklayerd.processor import CURSOR, Pipeline, Processor  # noqa: E402
from tracklayerd.scheduler import Scheduler  # noqa: E402
from tracklayerd.store.base import InboxRow  # noqa: E402
from tracklayerd.store.sqlite import SQLiteStore  # noqa: E402
from tracklayerd.threads import share_gil_with_store_threads  # noqa: E402

TOKEN = "bench-token"
PIXEL = "1234567890"
BATCH = 1000

SINK = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    from aiohttp import web
    from tests.fakes.meta import FakeMeta

    fake = FakeMeta(access_token={TOKEN!r})

    @web.middleware
    async def forget(request, handler):
        try:
            return await handler(request)
        finally:
            fake.requests.clear()
            fake.accepted.clear()

    fake.app._client_max_size = 64 << 20  # 1,000 events are more than aiohttp's 1 MiB
    fake.app.middlewares.append(forget)
    web.run_app(fake.app, host="127.0.0.1", port=int(sys.argv[1]), print=None,
                access_log=None)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def native_event(i: int, now: float) -> dict[str, Any]:
    """A realistic web purchase: every identifier Meta matches on, one item."""
    return {
        "event": "purchase", "event_id": f"order-{i}", "timestamp": now - 30,
        "order_id": f"{i}", "value": 42.5, "currency": "EUR",
        "user": {"email": f"Customer.{i}@Example.com", "phone": f"+44 7911 1{i % 100000:05d}",
                 "first_name": "Ada", "last_name": "Lovelace", "city": "London",
                 "country": "GB", "external_id": f"cust-{i}",
                 "fbp": f"fb.1.1763000000000.{1000000 + i}",
                 "fbc": f"fb.1.1763000000000.IwAR{i:08d}"},
        "items": [{"id": "sku-1", "price": 21.25, "quantity": 2}],
        # A UK customer: without a consent statement Meta would not get it (docs/consent.md).
        "consent": {"categories": {"marketing": True}},
        "context": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                    "page_url": "https://shop.example/checkout/thanks"},
    }


def make_config(data_dir: Path, port: int, concurrency: int) -> Config:
    return parse_config({
        "sources": {"web": {"type": "http_api", "token": "bench"}},
        "storage": {"path": str(data_dir / "tl.sqlite3")},
        "destinations": {"meta": {
            "type": "meta_capi", "pixel_id": PIXEL, "access_token": TOKEN,
            "endpoint": f"http://127.0.0.1:{port}/v24.0/{PIXEL}/events",
            "batch_linger_secs": 0, "concurrency": concurrency,
        }},
    }, data_dir)


async def fill_inbox(store: SQLiteStore, n: int, now: float) -> None:
    encode = msgspec.json.encode
    for start in range(0, n, 5000):
        await store.append_inbox([
            InboxRow(source="web", message_id=f"order-{i}", kind="native", received_at=now,
                     payload=encode(native_event(i, now)))
            for i in range(start, min(n, start + 5000))
        ])


async def finished(store: SQLiteStore, n: int) -> bool:
    """Every event processed and no delivery left to send (whatever became of it).

    Read from the cursor and the status page's per-state totals (kept by triggers): counting
    the tables every 50 ms would take CPU from what is measured."""
    if await store.cursor(CURSOR) < n:  # inbox seqs are 1..n
        return False
    totals = {c.status: c.count for c in await store.delivery_totals(["meta"])}
    return not any(totals.get(s) for s in ("pending", "retrying", "in_flight"))


async def bare(config: Config, requests: int, concurrency: int) -> float:
    """Events/s of a plain client posting the bodies tracklayerd would send."""
    destination = create_destinations(config)["meta"]
    now = time.time()
    received = datetime.now(UTC)
    payloads = []
    for i in range(BATCH):
        native = native_decoder.decode(msgspec.json.encode(native_event(i, now)))
        encoded = destination.encode(
            from_native(native, event_id=f"order-{i}", source="web", received_at=received))
        assert encoded.payload is not None, encoded.rejected
        payloads.append(encoded.payload)
    request = destination.build_request(payloads)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            async with session.post(request.url, data=request.body,
                                    headers=request.headers) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"sink refused the bare body: {response.status}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    await destination.close()
    return requests * BATCH / elapsed


async def tracklayerd_rates(config: Config, n: int) -> tuple[float, float]:
    """(delivery engine alone, end to end) in events/s."""
    path = Path(config.storage.path)
    results = []
    for end_to_end in (False, True):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = SQLiteStore(path)
        await store.open()
        now = time.time()
        await fill_inbox(store, n, now)
        destinations = create_destinations(config)
        scheduler = Scheduler(store, list(destinations.values()))
        processor = Processor(store, Pipeline(config, destinations),
                              on_processed=scheduler.wake)
        if not end_to_end:
            await processor.run_until_idle()
        started = time.perf_counter()
        if end_to_end:
            processor.start()
        scheduler.start()
        while not await finished(store, n):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await processor.stop()
        await scheduler.stop(0)
        counts = await store.counts()
        await store.close()
        if counts.get("deliveries.delivered") != n:
            raise SystemExit(f"not every event was delivered: {counts}")
        results.append(n / elapsed)
    return results[0], results[1]


def drain(data_dir: Path, port: int, n: int, concurrency: int) -> tuple[float, int]:
    """Seconds for `tracklayerd serve` to deliver an n-event backlog; its peak RSS (kB)."""
    config = make_config(data_dir, port, concurrency)
    store_path = Path(config.storage.path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)

    async def prefill() -> None:
        store = SQLiteStore(store_path)
        await store.open()
        await fill_inbox(store, n, time.time())
        await store.close()

    asyncio.run(prefill())
    config_file = data_dir / "drain.toml"
    config_file.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{free_port()}"
        [storage]
        path = "{store_path}"
        [sources.web]
        type = "http_api"
        token = "bench"
        [destinations.meta]
        type = "meta_capi"
        pixel_id = "{PIXEL}"
        access_token = "{TOKEN}"
        endpoint = "http://127.0.0.1:{port}/v24.0/{PIXEL}/events"
        batch_linger_secs = 0
        concurrency = {concurrency}
    """))
    started = time.perf_counter()
    serve = subprocess.Popen(
        [sys.executable, "-m", "tracklayerd", "serve", "--config", str(config_file)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    try:
        import sqlite3

        while True:
            time.sleep(1.0)
            with open(f"/proc/{serve.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1])
            conn = sqlite3.connect(store_path, timeout=30)
            try:  # the status page's totals and the cursor: counting rows would cost CPU
                totals = dict(conn.execute(
                    "SELECT status, deliveries FROM status_delivery_totals"
                    " WHERE destination = 'meta'").fetchall())
                done = totals.get("delivered", 0)
                queued = sum(totals.get(s, 0) for s in ("pending", "retrying", "in_flight"))
                processed = (conn.execute("SELECT position FROM cursors WHERE name = ?",
                                          (CURSOR,)).fetchone() or (0,))[0]
            finally:
                conn.close()
            print(f"  drain: {done:,} / {n:,} delivered, peak RSS {peak / 1024:.0f} MiB",
                  end="\r", flush=True)
            if done >= n:
                break
            if processed >= n and not queued:
                raise SystemExit(f"only {done:,} of {n:,} events were delivered")
            if serve.poll() is not None:
                raise SystemExit("tracklayerd serve exited during the drain")
        elapsed = time.perf_counter() - started
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    print()
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--drain", type=int, default=0, help="backlog size for the drain run")
    args = parser.parse_args()
    share_gil_with_store_threads()  # as `tracklayerd serve` does
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    data_dir = Path(tempfile.mkdtemp(prefix="tracklayerd-bench-"))
    try:
        wait_port(port)
        config = make_config(data_dir, port, args.concurrency)
        requests = max(1, args.events // BATCH)
        bare_rate = asyncio.run(bare(config, requests, args.concurrency))
        delivery_rate, end_to_end_rate = asyncio.run(tracklayerd_rates(config, args.events))
        print(f"sink: fake Meta (validating), batches of {BATCH}, "
              f"{args.concurrency} requests in flight, {os.cpu_count()} CPUs")
        print(f"bare aiohttp client      {bare_rate:10,.0f} events/s")
        print(f"tracklayerd delivery     {delivery_rate:10,.0f} events/s"
              f"  ({delivery_rate / bare_rate:.0%} of bare)")
        print(f"tracklayerd end to end   {end_to_end_rate:10,.0f} events/s"
              f"  ({end_to_end_rate / bare_rate:.0%} of bare)")
        if args.drain:
            elapsed, peak_kb = drain(data_dir, port, args.drain, args.concurrency)
            print(f"drain of {args.drain:,} events: {elapsed:,.0f} s "
                  f"({args.drain / elapsed:,.0f} events/s), peak RSS {peak_kb / 1024:.0f} MiB")
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
