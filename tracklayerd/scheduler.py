"""The delivery scheduler: one loop per destination, so a slow or dead platform never delays
another.

Each loop leases due deliveries from the store (oldest first, at most the platform's batch
size), dead-letters what the platform would refuse for the whole batch (too old, too far in
the future), sends the rest as one request and turns the per-event outcomes into new states:
delivered, retrying (exponential backoff with jitter, or the platform's Retry-After) or dead
(rejected, or still failing at the end of the retry horizon). When a platform refuses a whole
batch, the batch is split in halves and resent until the offending events are alone, so the
good ones still go through. Failed requests in a row open a circuit breaker that pauses the
destination. Leases make a crash mid-send re-send the same bytes (same event id) after the
lease expires; the platforms deduplicate them.

Wake-ups are event-driven (the processor calls wake() after each commit); an idle loop sleeps
until its next due retry, checking the store every POLL_SECS for work queued by another
process (``tracklayerd replay``). Tests drive it with run_until_idle() and an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from tracklayerd.destinations.base import (
    Delivered,
    Destination,
    Outcome,
    Rejected,
    Reply,
    RetryLater,
    TransportError,
)
from tracklayerd.errors import StoreUnavailable
from tracklayerd.events import event_decoder
from tracklayerd.metrics import Metrics
from tracklayerd.store.base import (
    Attempt,
    DeliveryUpdate,
    Exchange,
    LeasedDelivery,
    Store,
)

log = logging.getLogger("tracklayerd.scheduler")

POLL_SECS = 30.0
STORE_RETRY_SECS = 1.0
RATE_LIMIT_PAUSE_CAP_SECS = 3600.0


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds (what the store keeps)."""


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass
class Breaker:
    """Consecutive failed requests open it; after the cooldown one request probes."""

    threshold: int
    base_cooldown: float
    max_cooldown: float
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0
    opened: int = 0

    def state(self, now: float) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def success(self) -> None:
        self.failures = 0
        self.cooldown = 0.0

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.cooldown = min(self.max_cooldown, self.cooldown * 2 or self.base_cooldown)
            self.open_until = now + self.cooldown
            self.opened += 1


@dataclass
class WorkerStats:
    requests: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    last_error: str | None = None
    paused_until: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


class _Item:
    __slots__ = ("delivery", "payload")

    def __init__(self, delivery: LeasedDelivery, payload: bytes) -> None:
        self.delivery = delivery
        self.payload = payload


class DestinationWorker:
    """Sends one destination's deliveries; see the module docstring."""

    def __init__(
        self, destination: Destination, store: Store, clock: Clock, rng: random.Random,
        metrics: Metrics | None = None,
    ) -> None:
        self.destination = destination
        self._metrics = metrics
        self.id = destination.id
        self._store = store
        self._clock = clock
        self._rng = rng
        config = destination.config
        self.batch_size = max(1, min(destination.limits.max_events,
                                     config.max_batch_events or destination.limits.max_events))
        # A split batch can take log2(batch) requests; the lease must outlive all of them.
        self.lease_secs = config.timeout_secs * 2 + 30.0
        self.breaker = Breaker(config.breaker_failures, config.breaker_cooldown_secs,
                               max(config.backoff_max_secs, config.breaker_cooldown_secs))
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._leased: dict[int, LeasedDelivery] = {}

    def wake(self) -> None:
        self._wake.set()

    def state(self) -> str:
        now = self._clock.now()
        if now < self.stats.paused_until:
            return "paused"
        return self.breaker.state(now)

    def _blocked_until(self, now: float) -> float | None:
        """When sending may resume (circuit open or rate-limited), or None if it may now."""
        until = max(self.stats.paused_until,
                    self.breaker.open_until if self.breaker.state(now) == "open" else 0.0)
        return until if until > now else None

    # -- one batch ------------------------------------------------------------------------

    async def lease(self) -> list[LeasedDelivery]:
        batch = await self._store.lease_deliveries(
            self.id, self._clock.now(), self.batch_size, self.lease_secs)
        for delivery in batch:
            self._leased[delivery.id] = delivery
        return batch

    async def deliver(self, batch: Sequence[LeasedDelivery]) -> None:
        """Send a leased batch and record every outcome. Cancelled (shutdown), the batch
        stays leased for drain() to give back; failed otherwise, its leases expire."""
        try:
            exchanges, updates = await self._attempt(batch)
            await self._store.finish_deliveries(exchanges, updates, self._clock.now())
            if self._metrics is not None:
                self._metrics.delivery_recorded(self.id, exchanges)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._forget(batch)
            raise
        self._forget(batch)

    def _forget(self, batch: Sequence[LeasedDelivery]) -> None:
        for delivery in batch:
            self._leased.pop(delivery.id, None)

    async def _attempt(
        self, batch: Sequence[LeasedDelivery]
    ) -> tuple[list[Exchange], list[DeliveryUpdate]]:
        now = self._clock.now()
        exchanges: list[Exchange] = []
        updates: list[DeliveryUpdate] = []
        unsent: list[Attempt] = []
        items: list[_Item] = []
        bodies = await self._bodies([d for d in batch if d.payload is None])
        for delivery in batch:
            payload = delivery.payload
            problem = self._too_old_or_new(delivery, now)
            if problem is None and payload is None:
                payload, problem = self._encode(bodies.get(delivery.event_row))
            if problem is not None or payload is None:
                reason = problem or "cannot be encoded"
                unsent.append(Attempt(delivery=delivery.id, outcome="filtered", reason=reason))
                updates.append(DeliveryUpdate(id=delivery.id, status="dead", reason=reason,
                                              next_attempt_at=now, tried=False))
            else:
                items.append(_Item(delivery, payload))
        chunks, oversized = self._within_max_bytes(items)
        for item, reason in oversized:
            unsent.append(Attempt(delivery=item.delivery.id, outcome="filtered", reason=reason))
            updates.append(DeliveryUpdate(id=item.delivery.id, status="dead", reason=reason,
                                          next_attempt_at=now, tried=False))
        if unsent:
            exchanges.append(Exchange(destination=self.id, attempts=unsent, started_at=now,
                                      sent=False))
        for chunk in chunks:
            decided = await self._send(chunk, exchanges)
            updates.extend(self._decide(item.delivery, outcome) for item, outcome in decided)
        self.stats.delivered += sum(u.status == "delivered" for u in updates)
        self.stats.dead += sum(u.status == "dead" for u in updates)
        self.stats.retried += sum(u.status == "retrying" for u in updates)
        return exchanges, updates

    async def _bodies(self, missing: Sequence[LeasedDelivery]) -> dict[int, bytes]:
        if not missing:
            return {}
        return await self._store.event_bodies([d.event_row for d in missing])

    def _encode(self, body: bytes | None) -> tuple[bytes | None, str | None]:
        """Encode a stored event now: its payload was not kept (replay --rebuild, or an
        event processed before payloads were stored)."""
        if body is None:
            return None, "the stored event is gone"
        try:
            encoded = self.destination.encode(event_decoder.decode(body))
        except (msgspec.DecodeError, ValueError) as exc:
            return None, f"the stored event cannot be read: {exc}"
        except Exception as exc:  # a destination bug must not wedge its queue
            log.exception("destination %s failed to encode a stored event", self.id)
            return None, f"internal error encoding the event: {type(exc).__name__}"
        if encoded.payload is None:
            return None, f"rejected before sending: {encoded.rejected}"
        return encoded.payload, None

    def _within_max_bytes(
        self, items: list[_Item]
    ) -> tuple[list[list[_Item]], list[tuple[_Item, str]]]:
        """The batch in requests whose bodies stay within the platform's `max_bytes`, in
        order; and the events too big to go in any request (the platform would refuse it)."""
        limit = self.destination.limits.max_bytes
        if limit is None or not items:
            return ([items] if items else []), []
        # What the request adds around its events, and per further event (a comma, say):
        # measured on the destination's own request, so any body layout is counted.
        sample = items[0].payload
        one = len(self.destination.build_request([sample]).body)
        two = len(self.destination.build_request([sample, sample]).body)
        wrapper, separator = max(0, one - len(sample)), max(0, two - one - len(sample))
        chunks: list[list[_Item]] = []
        oversized: list[tuple[_Item, str]] = []
        current: list[_Item] = []
        size = wrapper
        for item in items:
            if wrapper + len(item.payload) > limit:
                oversized.append((item, (
                    f"the event's payload is {len(item.payload):,} bytes; with the request "
                    f"around it that is over the platform's {limit:,} bytes per request")))
                continue
            added = len(item.payload) + (separator if current else 0)
            if current and size + added > limit:
                chunks.append(current)
                current, size, added = [], wrapper, len(item.payload)
            current.append(item)
            size += added
        if current:
            chunks.append(current)
        return chunks, oversized

    def _too_old_or_new(self, delivery: LeasedDelivery, now: float) -> str | None:
        limits = self.destination.limits
        when = delivery.occurred_at
        if when is None:
            return None
        if limits.max_age_secs is not None and now - when > limits.max_age_secs:
            return (f"event time is {(now - when) / 86400:.1f} days ago; the platform accepts "
                    f"at most {limits.max_age_secs / 86400:g} days (it would refuse the whole "
                    "batch)")
        if limits.max_future_secs is not None and when - now > limits.max_future_secs:
            return (f"event time is {when - now:.0f} s in the future; the platform accepts at "
                    f"most {limits.max_future_secs:.0f} s (check the sender's clock)")
        return None

    async def _send(
        self, items: list[_Item], exchanges: list[Exchange]
    ) -> list[tuple[_Item, Outcome]]:
        """One request; a whole-batch rejection of several events is split and resent."""
        started = self._clock.now()
        clock_started = time.perf_counter()
        reply: Reply | None = None
        try:
            outcomes = list(await self.destination.send([item.payload for item in items]))
            if len(outcomes) != len(items):
                raise RuntimeError(f"destination returned {len(outcomes)} outcomes for "
                                   f"{len(items)} events")
        except TransportError as exc:
            outcomes = [RetryLater(reason=str(exc))] * len(items)
            error: str | None = str(exc)
        except Exception as exc:
            log.exception("destination %s failed while sending", self.id)
            outcomes = [RetryLater(reason=f"internal error sending: {type(exc).__name__}")
                        ] * len(items)
            error = f"internal error: {type(exc).__name__}"
        else:
            error = None
            reply = next((o.reply for o in outcomes if o.reply is not None), None)
        self.stats.requests += 1
        split = len(items) > 1 and all(
            isinstance(o, Rejected) and o.whole_batch for o in outcomes)
        exchanges.append(Exchange(
            destination=self.id, started_at=started,
            duration_ms=reply.elapsed_ms if reply is not None
            else round((time.perf_counter() - clock_started) * 1000, 1),
            http_status=None if reply is None else reply.status,
            response=None if reply is None else reply.body, error=error,
            attempts=[Attempt(delivery=item.delivery.id, outcome=_outcome_name(o, split),
                              reason=_reason(o)) for item, o in zip(items, outcomes, strict=True)],
        ))
        self._account(outcomes, self._clock.now())
        if split:
            half = len(items) // 2
            return (await self._send(items[:half], exchanges)
                    + await self._send(items[half:], exchanges))
        return list(zip(items, outcomes, strict=True))

    def _account(self, outcomes: Sequence[Outcome], now: float) -> None:
        if outcomes and all(isinstance(o, RetryLater) for o in outcomes):
            self.breaker.failure(now)
            first = outcomes[0]
            assert isinstance(first, RetryLater)
            self.stats.last_error = first.reason
            if first.after_secs:  # rate-limited: the whole destination waits
                pause = min(first.after_secs, RATE_LIMIT_PAUSE_CAP_SECS)
                self.stats.paused_until = max(self.stats.paused_until, now + pause)
            if self.breaker.state(now) == "open":
                # The platform's words stay in the attempts log (the trace, the status page):
                # a receiver may echo personal data back, and logs must never hold it.
                answer = ("no answer" if first.reply is None
                          else f"last answer HTTP {first.reply.status}")
                log.warning("destination %s: %d failed requests in a row (%s), pausing %.0f s",
                            self.id, self.breaker.failures, answer, self.breaker.cooldown)
        else:
            self.breaker.success()

    def _decide(self, delivery: LeasedDelivery, outcome: Outcome) -> DeliveryUpdate:
        now = self._clock.now()
        if isinstance(outcome, Delivered):
            return DeliveryUpdate(id=delivery.id, status="delivered", next_attempt_at=now)
        if isinstance(outcome, Rejected):
            return DeliveryUpdate(id=delivery.id, status="dead", next_attempt_at=now,
                                  reason=outcome.reason)
        config = self.destination.config
        horizon_end = delivery.created_at + config.retry_horizon_secs
        attempts = delivery.attempts + 1
        if now >= horizon_end:
            return DeliveryUpdate(
                id=delivery.id, status="dead", next_attempt_at=now,
                reason=f"gave up after {attempts} attempts over "
                       f"{(now - delivery.created_at) / 3600:.1f} h: {outcome.reason}")
        if outcome.after_secs is not None:
            delay = outcome.after_secs
        else:
            delay = min(config.backoff_max_secs, config.backoff_base_secs * 2 ** (attempts - 1))
            delay *= 0.5 + self._rng.random() / 2  # full retries must not arrive in lockstep
        return DeliveryUpdate(id=delivery.id, status="retrying",
                              next_attempt_at=min(now + delay, horizon_end),
                              reason=outcome.reason)

    # -- the loop -------------------------------------------------------------------------

    async def run_until_idle(self) -> int:
        """Send everything due now, one batch at a time; returns deliveries leased."""
        total = 0
        while self._blocked_until(self._clock.now()) is None:
            batch = await self.lease()
            if not batch:
                break
            total += len(batch)
            await self.deliver(batch)
        return total

    async def run(self) -> None:
        linger = self.destination.config.batch_linger_secs
        concurrency = self.destination.config.concurrency
        idle = True
        while True:
            self._wake.clear()
            try:
                blocked = self._blocked_until(self._clock.now())
                if blocked is not None:
                    await self._sleep(blocked - self._clock.now(), wakeable=False)
                    continue
                if len(self._inflight) >= concurrency:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if idle and linger:
                    # The first events after a quiet spell wait briefly for company, so a
                    # burst goes out as one request rather than many small ones.
                    await asyncio.sleep(linger)
                batch = await self.lease()
                if batch:
                    idle = len(batch) < self.batch_size and not self._inflight
                    task = asyncio.create_task(self._deliver_logged(batch))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                    continue
                idle = True
                due = await self._store.next_due(self.id)
                wait = POLL_SECS if due is None else min(POLL_SECS, due - self._clock.now())
                if wait > 0:
                    await self._sleep(wait, wakeable=True)
            except StoreUnavailable as exc:
                log.warning("destination %s paused: %s", self.id, exc)
                await asyncio.sleep(STORE_RETRY_SECS)

    async def _deliver_logged(self, batch: list[LeasedDelivery]) -> None:
        try:
            await self.deliver(batch)
        except StoreUnavailable as exc:
            # The leases expire and the batch is sent again: same bytes, same event ids.
            log.warning("destination %s: could not record a batch's outcome: %s", self.id, exc)
        except Exception:
            log.exception("destination %s: batch failed", self.id)

    async def _sleep(self, secs: float, *, wakeable: bool) -> None:
        if not wakeable:
            await asyncio.sleep(max(0.0, secs))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, secs))

    async def drain(self, grace: float) -> None:
        """Let in-flight sends finish within `grace` seconds; give back what did not."""
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=grace)
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.wait(self._inflight)
        if self._leased:
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_leases(list(self._leased), self._clock.now())
            self._leased.clear()


def _outcome_name(outcome: Outcome, split: bool) -> str:
    if split:
        return "split"
    if isinstance(outcome, Delivered):
        return "delivered"
    return "retry" if isinstance(outcome, RetryLater) else "rejected"


def _reason(outcome: Outcome) -> str | None:
    return None if isinstance(outcome, Delivered) else outcome.reason


class Scheduler:
    def __init__(
        self, store: Store, destinations: Sequence[Destination], *,
        clock: Clock | None = None, rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        rng = rng or random.Random()
        self.workers = {
            d.id: DestinationWorker(d, store, self.clock, rng, metrics)
            for d in destinations if d.config.mode == "live"
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def wake(self) -> None:
        for worker in self.workers.values():
            worker.wake()

    async def run_until_idle(self) -> int:
        """Send everything due now on every destination; returns deliveries leased."""
        total = 0
        while True:
            sent = 0
            for worker in self.workers.values():
                sent += await worker.run_until_idle()
            if not sent:
                return total
            total += sent

    def start(self) -> None:
        for dest_id, worker in self.workers.items():
            self._tasks[dest_id] = asyncio.create_task(
                worker.run(), name=f"tracklayerd-destination-{dest_id}")

    async def stop(self, grace: float = 10.0) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(*(w.drain(grace) for w in self.workers.values()))
        for worker in self.workers.values():
            await worker.destination.close()
