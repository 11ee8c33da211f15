"""Status page speed: `GET /-/status` and `/-/status.json` on a store of 1,000,000 events.

Run from the repository root::

    .venv/bin/python contrib/bench/status.py                      # fill a temporary store
    .venv/bin/python contrib/bench/status.py --db /tmp/st.sqlite3 # keep it for the next run
    .venv/bin/python contrib/bench/status.py --days 1             # every event in the window

The store is filled through the store API the service itself uses, not with raw SQL: the
processor's `commit_processed` (events made by the real pipeline from a few dozen native
events, then copied with new ids and times), and the scheduler's `lease_deliveries` and
`finish_deliveries` with Meta-like answers, so requests, attempts and delivery states are
what a running tracklayerd leaves behind. The mix, over `--days` ending now:

* two sources (web, shop); ~92 % accepted, 3 % dropped by shop's allowlist, 3 % duplicates,
  2 % invalid; purchases, leads, sign-ups, add-to-carts and page views, a share of them
  without an explicit event id; a few hundred ingest rejects;
* a live Meta destination: ~92 % delivered (0.2-4 s after processing), ~2 % dead (Meta
  errors), ~6 % suppressed by consent (GB customers without marketing consent); 30 % of
  the last hour's deliveries are left retrying;
* an observe-mode webhook destination (every accepted event: observed).

Then the app serves the store (no processor or scheduler running) and each page is fetched
over HTTP: the first answer after opening the store, then the median and worst of
`--repeat` more. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracklayerd.app import create_app  # noqa: E402
from tracklayerd.config import Config, parse_config  # noqa: E402
from tracklayerd.destinations.registry import create_destinations  # noqa: E402
from tracklayerd.processor import Pipeline  # noqa: E402
from tracklayerd.store.base import (  # noqa: E402
    Attempt,
    DeliveryUpdate,
    Exchange,
    InboxRecord,
    ProcessedEvent,
)
from tracklayerd.store.sqlite import SQLiteStore  # noqa: E402

BATCH = 1000
PIXEL = "1234567890"
META_OK = '{"events_received":%d,"messages":[],"fbtrace_id":"A%08dbench"}'
META_ERRORS = [
    ('{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,'
     '"error_subcode":2804009,"error_user_title":"Missing Value for Purchase Event",'
     '"is_transient":false,"fbtrace_id":"A%08dbench"}}',
     "Meta 100/2804009: Missing Value for Purchase Event (fbtrace_id=A%08dbench)"),
    ('{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,'
     '"error_subcode":2804003,"error_user_title":"Event Timestamp Too Old",'
     '"is_transient":false,"fbtrace_id":"A%08dbench"}}',
     "Meta 100/2804003: Event Timestamp Too Old (fbtrace_id=A%08dbench)"),
]


def config_for(data_dir: Path, db: Path) -> Config:
    return parse_config({
        "sources": {"web": {"type": "http_api", "token": "bench-web"},
                    "shop": {"type": "http_api", "token": "bench-shop",
                             "allow": ["purchase", "lead", "sign_up", "add_to_cart"]}},
        "storage": {"path": str(db), "synchronous": "normal"},
        "consent": {"ad_categories": ["marketing"]},
        "destinations": {
            "meta": {"type": "meta_capi", "pixel_id": PIXEL, "access_token": "bench",
                     "endpoint": "http://127.0.0.1:9/v24.0/1234567890/events"},
            "hook": {"type": "webhook", "endpoint": "http://127.0.0.1:9/hook",
                     "mode": "observe"},
        },
    }, data_dir)


def native(kind: str, i: int, now: float, *, explicit: bool, consent: bool) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": kind, "timestamp": now - 30,
        "user": {"email": f"customer.{i}@example.com", "external_id": f"cust-{i}",
                 "country": "GB" if i % 3 == 0 else "US",
                 **({"phone": f"+44 7911 1{i % 100000:05d}"} if i % 2 else {}),
                 **({"fbp": f"fb.1.1763000000000.{1000000 + i}"} if i % 4 else {})},
        "context": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                    "page_url": "https://shop.example/checkout/thanks"},
    }
    if explicit:
        event["event_id"] = f"{kind}-{i}"
    if consent:
        event["consent"] = {"categories": {"marketing": True}}
    if kind in ("purchase", "add_to_cart"):
        event.update(order_id=f"{i}", value=42.5, currency="EUR",
                     items=[{"id": "sku-1", "price": 21.25, "quantity": 2}])
    return event


def templates(config: Config, now: float) -> list[ProcessedEvent]:
    """Real pipeline output for a varied set of events; copied (new ids, times) to fill."""
    pipeline = Pipeline(config, create_destinations(config))
    kinds = ["purchase", "purchase", "lead", "sign_up", "add_to_cart", "page_view",
             "page_view", "page_view"]
    made = []
    for i in range(48):
        kind = kinds[i % len(kinds)]
        payload = msgspec.json.encode(native(kind, i, now, explicit=i % 5 != 0,
                                             consent=i % 7 != 0))
        record = InboxRecord(seq=i + 1, source="web", message_id=f"m-{i}", kind="native",
                             received_at=now, payload=payload)
        made.append(pipeline.process(record))
    return made


async def fill(store: SQLiteStore, config: Config, n: int, days: float, seed: int) -> None:
    rng = random.Random(seed)
    end = time.time()
    start = end - days * 86400
    step = (end - start) / n
    protos = templates(config, start)
    accepted = [p for p in protos if p.status == "accepted"]
    shop_names = {"purchase", "lead", "sign_up", "add_to_cart"}
    seq = 0
    request_no = 0
    started = time.perf_counter()
    while seq < n:
        t = start + seq * step
        events = []
        for _ in range(min(BATCH, n - seq)):
            seq += 1
            proto = accepted[rng.randrange(len(accepted))]
            source = "shop" if seq % 4 == 0 else "web"
            roll = rng.random()
            status, reason, duplicate_of, deliveries = "accepted", None, None, proto.deliveries
            if source == "shop" and proto.name not in shop_names:
                status, deliveries = "dropped", []
                reason = f"not in the allowlist of source shop: {proto.name!r} (track)"
            elif roll < 0.03 and seq > 1:
                status, deliveries = "duplicate", []
                reason, duplicate_of = "same order as an earlier event", seq - 1
            elif roll < 0.05:
                status, deliveries = "invalid", []
                reason = "event: Expected `str`, got `int` - at `$.event`"
            events.append(msgspec.structs.replace(
                proto, inbox_seq=seq, source=source, event_id=f"{proto.event_id}-{seq}",
                received_at=t, occurred_at=t - 30, status=status, reason=reason,
                duplicate_of=duplicate_of, deliveries=deliveries, dedup_key=None))
        await store.commit_processed(events, "processor", seq, now=t)
        # The scheduler's part: lease what is due and record Meta's answers.
        recent = end - t < 3600
        while True:
            leased = await store.lease_deliveries("meta", t, BATCH, 60.0)
            if not leased:
                break
            request_no += 1
            done = t + rng.uniform(0.2, 4.0)
            updates: list[DeliveryUpdate] = []
            answered: dict[str, list[Attempt]] = {"ok": [], "rejected": [], "retry": []}
            for delivery in leased:
                roll = rng.random()
                if recent and roll < 0.3:
                    reason = "HTTP 503 from the platform"
                    updates.append(DeliveryUpdate(id=delivery.id, status="retrying",
                                                  next_attempt_at=end + 600, reason=reason))
                    answered["retry"].append(Attempt(delivery=delivery.id, outcome="retry",
                                                     reason=reason))
                elif roll < 0.02:
                    reason = META_ERRORS[rng.randrange(len(META_ERRORS))][1] % request_no
                    updates.append(DeliveryUpdate(id=delivery.id, status="dead",
                                                  next_attempt_at=done, reason=reason))
                    answered["rejected"].append(Attempt(delivery=delivery.id,
                                                        outcome="rejected", reason=reason))
                else:
                    updates.append(DeliveryUpdate(id=delivery.id, status="delivered",
                                                  next_attempt_at=done))
                    answered["ok"].append(Attempt(delivery=delivery.id, outcome="delivered"))
            # As Meta answers: one request for the good events, one refused for the bad
            # ones (after the split), one that failed for those to retry.
            answers = {"ok": (200, META_OK % (len(answered["ok"]), request_no)),
                       "rejected": (400, META_ERRORS[0][0] % request_no),
                       "retry": (503, "upstream connect error")}
            exchanges = [
                Exchange(destination="meta", attempts=attempts, started_at=done - 0.2,
                         duration_ms=180.0, http_status=answers[kind][0],
                         response=answers[kind][1])
                for kind, attempts in answered.items() if attempts]
            await store.finish_deliveries(exchanges, updates, done)
        if seq % 50_000 < BATCH:
            rate = seq / (time.perf_counter() - started)
            print(f"  filled {seq:,} / {n:,} events ({rate:,.0f}/s)", end="\r", flush=True)
    for i in range(300):
        await store.record_reject("web" if i % 3 else "shop",
                                  "invalid JSON: unexpected end of input" if i % 2
                                  else "event too large: 40000 bytes > 32768")
    print()


async def timed(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}")
    return (time.perf_counter() - started) * 1000


async def measure(config: Config, data_dir: Path, repeat: int) -> dict[str, list[float]]:
    app = create_app(config, data_dir, start_processor=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    figures: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/-/status", "/-/status.json"):
                url = f"http://{host}:{port}{path}"
                figures[path] = [await timed(session, url) for _ in range(repeat + 1)]
    finally:
        await runner.cleanup()
    return figures


async def main_async(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tracklayerd-status-bench-"))
    db = Path(args.db) if args.db else data_dir / "tl.sqlite3"
    config = config_for(data_dir, db)
    store = SQLiteStore(db, synchronous="normal")
    await store.open()
    try:
        have = await store.cursor("processor")
        if have < args.events:
            if have:
                raise SystemExit(f"{db} holds {have:,} events, fewer than {args.events:,}: "
                                 "remove it or pick another --db")
            print(f"filling {db} with {args.events:,} events over {args.days:g} days")
            await fill(store, config, args.events, args.days, args.seed)
        counts = await store.counts()
    finally:
        await store.close()
    print(f"store: {counts['events']:,} events, {counts['deliveries']:,} deliveries, "
          f"{db.stat().st_size / 2**20:,.0f} MiB; {os.cpu_count()} CPUs")
    figures = await measure(config, data_dir, args.repeat)
    for path, times in figures.items():
        first, rest = times[0], times[1:]
        print(f"GET {path:<16} first {first:6.0f} ms   median {statistics.median(rest):6.0f} ms"
              f"   worst {max(rest):6.0f} ms   ({len(rest)} requests)")
    if not args.db:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=7.0,
                        help="the events' receive times span this many days up to now")
    parser.add_argument("--db", help="store file to fill once and reuse")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
