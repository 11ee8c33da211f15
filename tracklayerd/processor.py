"""The processor: inbox → pipeline → canonical events + one delivery row per destination.

It reads the inbox in order from its cursor and writes each slice (events, deliveries and
the new cursor position) in one transaction, so a crash repeats at most the slice in
progress and the unique inbox_seq on events makes the repeat harmless. It sleeps until the
store reports new inbox rows: no polling while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tracklayerd import memory
from tracklayerd.config import Config
from tracklayerd.errors import StoreUnavailable
from tracklayerd.events import event_encoder
from tracklayerd.pipeline import contracts
from tracklayerd.pipeline.decode import Undecodable, decode
from tracklayerd.pipeline.mapping import Mapper, rules_from_config
from tracklayerd.store.base import DeliveryPlan, InboxRecord, ProcessedEvent, Store

log = logging.getLogger("tracklayerd.processor")

CURSOR = "processor"
SLICE = 500
RETRY_SECS = 1.0
# Under ingest load the processor sleeps this many times as long as its last slice took,
# i.e. it keeps about 1 / (1 + YIELD_FACTOR) of the time.
YIELD_FACTOR = 2.0
MAX_YIELD_SECS = 0.25


class Pipeline:
    """The pure steps, configured once: decode → map → contracts → allowlist → plan."""

    def __init__(self, config: Config) -> None:
        self._sources = config.sources
        self._destinations = config.destinations
        self._mapper = Mapper(
            rules_from_config(config.mappings, config.pipeline.builtin_mappings)
        )
        self._allow = {
            sid: frozenset(name.casefold() for name in src.allow)
            for sid, src in config.sources.items() if src.allow
        }

    def process(self, record: InboxRecord) -> ProcessedEvent:
        """One inbox record → its canonical event and delivery plan."""
        try:
            event = decode(record, self._sources.get(record.source))
        except Undecodable as exc:
            return ProcessedEvent(
                inbox_seq=record.seq, source=record.source, event_id=record.message_id,
                status="invalid", reason=str(exc), received_at=record.received_at,
            )
        event = contracts.check(self._mapper.apply(event))
        status, reason, plans = "accepted", None, []
        allowed = self._allow.get(record.source)
        names = {event.event, event.message_type, event.original_name or event.event}
        if allowed is not None and not {n.casefold() for n in names} & allowed:
            status = "dropped"
            reason = (f"not in the allowlist of source {record.source}: "
                      f"{event.original_name or event.event!r} ({event.message_type})")
        else:
            plans = [
                DeliveryPlan(destination=dest_id, status="pending")
                for dest_id, dest in self._destinations.items()
                if dest.mode != "off"
            ]
        return ProcessedEvent(
            inbox_seq=record.seq,
            source=record.source,
            event_id=event.event_id,
            status=status,
            reason=reason,
            name=event.event,
            occurred_at=event.timestamp.timestamp(),
            received_at=record.received_at,
            body=event_encoder.encode(event),
            deliveries=plans,
        )


class Processor:
    def __init__(self, store: Store, pipeline: Pipeline) -> None:
        self._store = store
        self._pipeline = pipeline
        self._wake = asyncio.Event()
        self._position: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy_since_idle = False
        store.on_inbox_append(self.wake)

    def wake(self) -> None:
        self._wake.set()

    async def process_slice(self) -> int:
        """Process up to SLICE inbox records; returns how many."""
        if self._position is None:
            self._position = await self._store.cursor(CURSOR)
        records = await self._store.read_inbox(self._position, SLICE)
        if not records:
            return 0
        results = []
        for record in records:
            try:
                results.append(self._pipeline.process(record))
            except Exception as exc:  # a pipeline bug must not wedge the queue
                log.exception("pipeline failed on inbox record %d", record.seq)
                results.append(ProcessedEvent(
                    inbox_seq=record.seq, source=record.source, event_id=record.message_id,
                    status="invalid", reason=f"internal error: {type(exc).__name__}",
                    received_at=record.received_at,
                ))
        await self._store.commit_processed(results, CURSOR, records[-1].seq)
        self._position = records[-1].seq
        return len(records)

    async def run_until_idle(self) -> int:
        """Process everything in the inbox now; returns the count (for tests and the CLI)."""
        total = 0
        while n := await self.process_slice():
            total += n
        return total

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            started = loop.time()
            try:
                processed = await self.process_slice()
                self._busy_since_idle |= bool(processed)
            except StoreUnavailable as exc:
                log.warning("processor paused: %s; retrying in %.0f s", exc, RETRY_SECS)
                await asyncio.sleep(RETRY_SECS)
                continue
            if not processed:
                if self._busy_since_idle:
                    self._busy_since_idle = False
                    memory.release_free_memory()  # a burst is over: give its heap back
                await self._wake.wait()
            elif self._store.ingest_waiting():
                # Senders are waiting for commits: acceptance comes first, since it is what
                # makes an event safe. The processor keeps a share of the time (a backlog
                # drains after the burst) instead of halving ingest throughput.
                await asyncio.sleep(min((loop.time() - started) * YIELD_FACTOR, MAX_YIELD_SECS))

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="tracklayerd-processor")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
