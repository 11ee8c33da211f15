"""The processor: inbox → pipeline → canonical events + one delivery row per destination.

It reads the inbox in order from its cursor and writes each slice (events, deliveries,
identity changes and the new cursor position) in one transaction, so a crash repeats at
most the slice in progress, and an event's id being its inbox seq makes the repeat harmless.
It sleeps until the store reports new inbox rows: no polling while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from tracklayerd import memory
from tracklayerd.config import Config, IdentityConfig
from tracklayerd.destinations.base import Destination, Encoded
from tracklayerd.destinations.registry import destination_platform
from tracklayerd.errors import StoreUnavailable
from tracklayerd.events import Event, event_encoder
from tracklayerd.metrics import Metrics
from tracklayerd.pacing import Pacer
from tracklayerd.pipeline import contracts
from tracklayerd.pipeline.click_ids import extract_click_ids
from tracklayerd.pipeline.consent import ConsentDecision, consent_rules, decide_all, limited
from tracklayerd.pipeline.decode import Undecodable, decode
from tracklayerd.pipeline.dedup import DedupPolicy, Duplicate, Seen, check, dedup_key
from tracklayerd.pipeline.identity import Graph, keys_of, stitch
from tracklayerd.pipeline.mapping import Mapper, rules_from_config
from tracklayerd.pipeline.quality import PLATFORMS, identifiers_present, score
from tracklayerd.store.base import (
    PROCESSOR_CURSOR,
    DeliveryPlan,
    IdentityChanges,
    InboxRecord,
    ProcessedEvent,
    Store,
)

log = logging.getLogger("tracklayerd.processor")
consent_encoder = msgspec.json.Encoder()

CURSOR = PROCESSOR_CURSOR
SLICE = 500
# While senders wait for commits: a slice's commit shares the writer with theirs, and 500
# events take ~10-15 ms to write there (the ingest p99); 100 take ~2-3 ms.
SLICE_CONTENDED = 100
RETRY_SECS = 1.0
# How long the processor lets new records gather after a wake-up (delivery latency is
# seconds at best: platforms batch, and the scheduler lingers to fill requests).
WAKE_DELAY_SECS = 0.02
# After a slice, the processor goes on at once only when this many records wait.
MIN_FOLLOWING = 64
PRUNE_EVERY_SECS = 3600.0
PRUNE_CHUNK = 5000
T = TypeVar("T")


class Pipeline:
    """The pure steps, configured once: decode → map → contracts → click IDs → allowlist;
    then (in the processor) identity stitching; then the delivery plan."""

    def __init__(
        self, config: Config, destinations: Mapping[str, Destination] | None = None
    ) -> None:
        self._sources = config.sources
        self._destinations = config.destinations
        # The destinations that encode payloads (their types can send).
        self._encoders = dict(destinations or {})
        self._mapper = Mapper(
            rules_from_config(config.mappings, config.pipeline.builtin_mappings)
        )
        self._allow = {
            sid: frozenset(name.casefold() for name in src.allow)
            for sid, src in config.sources.items() if src.allow
        }
        self._identity = config.identity
        self.dedup = DedupPolicy(
            enabled=config.dedup.enabled, order_events=frozenset(config.dedup.order_events),
            order_window_secs=config.dedup.order_window_secs,
            event_window_secs=config.dedup.event_window_secs)
        self._consent_policy, self._consent_rules = consent_rules(config)
        # Destinations whose platform has a match-quality model (pipeline/quality.py).
        self._platforms = {
            dest_id: platform for dest_id, dest in config.destinations.items()
            if (platform := destination_platform(dest.type)) in PLATFORMS
        }

    @property
    def identity(self) -> IdentityConfig:
        return self._identity

    @property
    def sending_destinations(self) -> list[str]:
        """Destinations that deliver (live, with a sending type): the ledger applies."""
        return [dest_id for dest_id, dest in self._destinations.items()
                if dest.mode == "live" and dest_id in self._encoders]

    def process(self, record: InboxRecord) -> ProcessedEvent:
        """One inbox record → its canonical event and delivery plan (without stitching)."""
        staged = self.prepare(record)
        return staged if isinstance(staged, ProcessedEvent) else self.finish(record, staged)

    def prepare(self, record: InboxRecord) -> Event | ProcessedEvent:
        """Decode, map, check contracts and the allowlist. An Event goes on to stitching;
        an invalid or dropped record is already final."""
        try:
            event = decode(record, self._sources.get(record.source))
        except Undecodable as exc:
            return ProcessedEvent(
                inbox_seq=record.seq, source=record.source, event_id=record.message_id,
                status="invalid", reason=str(exc), received_at=record.received_at,
            )
        # Click IDs before stitching: the fbc built on the landing page is the one carried on.
        event = extract_click_ids(contracts.check(self._mapper.apply(event)))
        allowed = self._allow.get(record.source)
        names = {event.event, event.message_type, event.original_name or event.event}
        if allowed is not None and not {n.casefold() for n in names} & allowed:
            reason = (f"not in the allowlist of source {record.source}: "
                      f"{event.original_name or event.event!r} ({event.message_type})")
            return self._result(record, event, "dropped", reason, [])
        return event

    def finish(
        self, record: InboxRecord, event: Event,
        delivered: Mapping[str, Mapping[str, int]] | None = None,
    ) -> ProcessedEvent:
        """The delivery plan. `delivered`: destination → event id → the event row already
        delivered under that id (the ledger); such a destination gets a suppressed delivery."""
        wanted = {dest_id: dest for dest_id, dest in self._destinations.items()
                  if dest.mode != "off" and (not dest.events or event.event in dest.events)}
        decisions = decide_all(event, {d: self._consent_rules[d] for d in wanted},
                               self._consent_policy)
        # The event without personal data, for destinations whose consent says "limited".
        stripped: Event | None = None
        present: dict[int, set[str]] = {}
        plans = []
        for dest_id, dest in wanted.items():
            decision = decisions[dest_id]
            plan = DeliveryPlan(destination=dest_id,
                                status="observed" if dest.mode == "observe" else "pending",
                                consent=consent_encoder.encode(decision))
            target = event
            if decision.outcome == "limited":
                stripped = stripped or limited(event)
                target = stripped
            platform = self._platforms.get(dest_id)
            if platform is not None:
                kinds = present.setdefault(id(target), identifiers_present(target))
                quality = score(kinds, platform)
                plan.match_quality = quality.score
                plan.match_missing = [missing.kind for missing in quality.missing]
            if decision.outcome == "suppressed":
                plan.status = "suppressed"
                plan.reason = f"consent: {decision.reason} [{decision.rule}]"
                plans.append(plan)
                continue
            encoder = self._encoders.get(dest_id)
            if encoder is not None and not self._encode(encoder, target, decision, plan):
                continue  # the platform takes no such event: no delivery at all
            earlier = (delivered or {}).get(dest_id, {}).get(event.event_id)
            if earlier is not None and plan.status != "dead":
                plan.status = "suppressed"
                plan.reason = (f"event id already delivered to {dest_id} with event "
                               f"#{earlier} (delivery ledger); replay --force to send again")
            plans.append(plan)
        return self._result(record, event, "accepted", None, plans)

    @staticmethod
    def _encode(
        destination: Destination, event: Event, decision: ConsentDecision, plan: DeliveryPlan
    ) -> bool:
        """Build the payload once, now: what is stored is what is sent, retried and traced.
        False when the destination takes no such event (no delivery is made)."""
        try:
            encoded = destination.encode(event, decision)
        except Exception as exc:  # one destination's bug must not cost the others the event
            log.exception("destination %s failed to encode an event", destination.id)
            encoded = Encoded(rejected=f"internal error encoding the event: "
                                       f"{type(exc).__name__}")
        if encoded.skipped is not None and encoded.payload is None:
            return False
        plan.payload = encoded.payload
        plan.warnings = encoded.warnings
        if encoded.payload is None:
            plan.status = "dead"
            plan.reason = f"rejected before sending: {encoded.rejected or 'cannot be encoded'}"
        return True

    @staticmethod
    def _result(
        record: InboxRecord, event: Event, status: str, reason: str | None,
        plans: list[DeliveryPlan],
    ) -> ProcessedEvent:
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
            explicit_id=event.explicit_event_id,
        )

    def duplicate(self, record: InboxRecord, event: Event, found: Duplicate) -> ProcessedEvent:
        result = self._result(record, event, "duplicate", found.reason, [])
        result.duplicate_of = found.of.event_row
        return result


@dataclass(slots=True)
class Staged:
    """A slice read and prepared: per record, its event (or final result) and identity keys."""

    records: list[InboxRecord]
    items: list[Event | ProcessedEvent]
    keys: list[list[tuple[str, str]]]


@dataclass(slots=True)
class Completed:
    results: list[ProcessedEvent]
    identity: IdentityChanges | None


class Processor:
    def __init__(
        self, store: Store, pipeline: Pipeline,
        on_processed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._store = store
        # Shares the loop with ingest (tracklayerd/pacing.py).
        self._pacer = pacer or Pacer(store.ingest_waiting, clock)
        self._clock = clock
        self._metrics = metrics
        self._pipeline = pipeline
        # Called after each committed slice (the scheduler's wake-up).
        self._on_processed = on_processed
        self._wake = asyncio.Event()
        self._position: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy_since_idle = False
        self._last_prune = 0.0
        self._claims: dict[int, str] = {}  # inbox seq → the dedup key it claims
        self._overlaps: set[tuple[str, str, str]] = set()  # (first, second source, event)
        store.on_inbox_append(self.wake)

    def wake(self) -> None:
        self._wake.set()

    async def process_slice(self) -> int:
        """Process up to SLICE inbox records; returns how many."""
        staged = await self._stage(await self._start())
        if staged is None:
            return 0
        await self._commit(staged, await self._complete(staged))
        return len(staged.records)

    async def process_available(self, min_following: int = 1) -> int:
        """Process slices back to back until the inbox is empty, or until fewer than
        `min_following` records are waiting after a slice; returns how many records.

        While one slice commits (on the store's writer thread), the next is read and
        prepared: decoding, mapping and hashing identity keys need nothing from the store.
        Everything that reads what earlier slices wrote (identity graph, dedup claims, the
        ledger) waits for that commit, so the result is the same as one slice at a time.
        """
        done = 0
        staged = await self._stage(await self._start())
        while staged is not None:
            commit = asyncio.ensure_future(self._commit(staged, await self._complete(staged)))
            try:
                following = await self._stage(staged.records[-1].seq, min_following)
            finally:
                await commit  # a failed commit discards the slice read ahead
            done += len(staged.records)
            staged = following
        return done

    async def _start(self) -> int:
        if self._position is None:
            self._position = await self._store.cursor(CURSOR)
        return self._position

    async def _stage(self, after: int, at_least: int = 1) -> Staged | None:
        """Read the records after `after` and run the steps needing no stored state (None
        when there are fewer than `at_least`)."""
        limit = SLICE_CONTENDED if self._pacer.contended() else SLICE
        records = await self._store.read_inbox(after, limit)
        if not records or len(records) < at_least:
            return None
        policy = self._pipeline.identity

        def prepare(record: InboxRecord) -> tuple[Event | ProcessedEvent, list[tuple[str, str]]]:
            item = self._guarded(record, self._pipeline.prepare, record)
            if not policy.enabled or not isinstance(item, Event):
                return item, []
            found = self._guarded(record, keys_of, item.user, policy.default_region)
            if isinstance(found, ProcessedEvent):  # hashing an identifier failed
                return found, []
            return item, found

        prepared = await self._each(records, prepare)
        return Staged(records=records, items=[item for item, _ in prepared],
                      keys=[keys for _, keys in prepared])

    async def _complete(self, staged: Staged) -> Completed:
        """Stitch identities, deduplicate, consult the ledger and plan the deliveries."""
        records, items = staged.records, staged.items
        changes = None
        if self._pipeline.identity.enabled:
            policy = self._pipeline.identity
            wanted = [key for event_keys in staged.keys for key in event_keys]
            graph = Graph.of(await self._store.load_identity(wanted) if wanted else [])
            stitched = iter(items)
            keys = iter(staged.keys)

            def join(record: InboxRecord) -> Event | ProcessedEvent:
                item, event_keys = next(stitched), next(keys)
                if not isinstance(item, Event):
                    return item
                return self._guarded(record, stitch, item, record.seq, graph, policy,
                                     event_keys)

            items = await self._each(records, join)
            changes = IdentityChanges(nodes=list(graph.changed.values()),
                                      relabels=graph.relabels)
        items = await self._deduplicate(records, items)
        delivered = await self._ledger(items)
        planned = iter(items)

        def plan(record: InboxRecord) -> ProcessedEvent:
            item = next(planned)
            if isinstance(item, ProcessedEvent):
                return item
            return self._guarded(record, self._pipeline.finish, record, item, delivered)

        results = await self._each(records, plan)
        for r, result in zip(records, results, strict=True):
            if result.status == "accepted":
                result.dedup_key = self._claims.get(r.seq)
        self._claims.clear()
        return Completed(results=results, identity=changes)

    async def _commit(self, staged: Staged, done: Completed) -> None:
        """Write the slice and move the cursor past it, in one transaction."""
        last = staged.records[-1].seq
        await self._store.commit_processed(done.results, CURSOR, last, done.identity,
                                           now=self._clock())
        if self._metrics is not None:
            self._metrics.processed(done.results)
        self._position = last
        if self._on_processed is not None:
            self._on_processed()

    async def _deduplicate(
        self, records: list[InboxRecord], staged: list[Event | ProcessedEvent]
    ) -> list[Event | ProcessedEvent]:
        """Events repeating an earlier one's business key (across sources, within the
        window) become duplicates; the first claim of each key is remembered."""
        policy = self._pipeline.dedup
        keys = {r.seq: key for r, item in zip(records, staged, strict=True)
                if isinstance(item, Event) and (key := dedup_key(item, policy)) is not None}
        if not keys:
            return staged
        known = await self._store.dedup_seen(list(keys.values()))
        first: dict[str, Seen] = {k: Seen(event_row=v[0], source=v[1], seen_at=v[2])
                                  for k, v in known.items()}
        result: list[Event | ProcessedEvent] = []
        for record, item in zip(records, staged, strict=True):
            key = keys.get(record.seq)
            if key is None or not isinstance(item, Event):
                result.append(item)
                continue
            found = check(key, record.received_at, first.get(key), policy)
            if found is not None:
                self._note_overlap(found.of.source, record.source, item.event)
                result.append(self._guarded(record, self._pipeline.duplicate, record, item,
                                            found))
                continue
            first[key] = Seen(event_row=record.seq, source=record.source,
                              seen_at=record.received_at)
            self._claims[record.seq] = key
            result.append(item)
        return result

    def _note_overlap(self, first: str, second: str, event: str) -> None:
        """Say once per process when two sources send the same conversions: the operator
        must decide which route owns them (docs/dedup.md)."""
        if first == second or (first, second, event) in self._overlaps:
            return
        self._overlaps.add((first, second, event))
        log.warning("sources %s and %s both send %s events: the repeats are kept as "
                    "duplicates and delivered once; decide which route owns them "
                    "(docs/dedup.md)", first, second, event)

    async def _ledger(self, staged: list[Event | ProcessedEvent]) -> dict[str, dict[str, int]]:
        """Per live destination, which of these event ids it already accepted."""
        event_ids = [item.event_id for item in staged if isinstance(item, Event)]
        if not event_ids:
            return {}
        return {dest_id: found for dest_id in self._pipeline.sending_destinations
                if (found := await self._store.delivered_event_ids(dest_id, event_ids))}

    async def _each(self, records: list[InboxRecord], step: Callable[[InboxRecord], T]) -> list[T]:
        """`step` over the records, paced (tracklayerd/pacing.py): a slice is ~100 ms of
        CPU, and requests waiting that long would be the ingest p99."""
        pacer = self._pacer
        pacer.resume()
        results: list[T] = []
        for record in records:
            await pacer.turn(record.received_at)
            results.append(step(record))
        return results

    @staticmethod
    def _guarded(
        record: InboxRecord, step: Callable[..., T], *args: Any
    ) -> T | ProcessedEvent:
        """Run a pipeline step; a bug in it marks the record invalid instead of wedging the
        queue (the raw record stays in the inbox and can be reprocessed)."""
        try:
            return step(*args)
        except Exception as exc:
            log.exception("pipeline failed on inbox record %d", record.seq)
            return ProcessedEvent(
                inbox_seq=record.seq, source=record.source, event_id=record.message_id,
                status="invalid", reason=f"internal error: {type(exc).__name__}",
                received_at=record.received_at,
            )

    async def prune(self, now: float) -> int:
        """Delete identity links past retention and dedup keys past their window, in bounded
        chunks; returns how many identity links went."""
        before = now - self._pipeline.identity.retention_days * 86400
        dedup = self._pipeline.dedup
        keys_before = now - max(dedup.order_window_secs, dedup.event_window_secs)
        counts = []
        for prune, cutoff in ((self._store.prune_identity, before),
                              (self._store.prune_dedup, keys_before)):
            total = 0
            while (n := await prune(cutoff, PRUNE_CHUNK)) > 0:
                total += n
                if n < PRUNE_CHUNK:
                    break
            counts.append(total)
        return counts[0]

    async def run_until_idle(self) -> int:
        """Process everything in the inbox now; returns the count (for tests and the CLI)."""
        total = 0
        while n := await self.process_available():
            total += n
        return total

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                # A slice of a few records costs nearly what a full one does: a trickle
                # gathers for WAKE_DELAY_SECS instead of being processed as it comes.
                processed = await self.process_available(min_following=MIN_FOLLOWING)
                self._busy_since_idle |= bool(processed)
            except StoreUnavailable as exc:
                log.warning("processor paused: %s; retrying in %.0f s", exc, RETRY_SECS)
                await asyncio.sleep(RETRY_SECS)
                continue
            if time.time() - self._last_prune > PRUNE_EVERY_SECS:
                self._last_prune = time.time()
                with contextlib.suppress(StoreUnavailable):
                    await self.prune(self._last_prune)
            if not self._wake.is_set():  # caught up, and nothing arrived meanwhile
                if self._busy_since_idle:
                    self._busy_since_idle = False
                    memory.release_free_memory()  # a burst is over: give its heap back
                await self._wake.wait()
            # Records arrive one group commit at a time. Collecting them for a moment makes
            # one slice of many instead of many slices of one or two: a slice costs several
            # store round trips and a commit whatever its size (at 1,000 events/s, the
            # process was at 90% CPU processing them one by one).
            await asyncio.sleep(WAKE_DELAY_SECS)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="tracklayerd-processor")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

