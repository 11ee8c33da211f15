"""Prometheus metrics for ``/metrics`` (docs/metrics.md).

Counters and histograms are updated where the work happens (ingest answers, processed
slices, recorded delivery attempts, group commits); queue gauges are read from SQLite when
Prometheus scrapes, so they are right after a restart and cost nothing between scrapes.

Each app has its own ``CollectorRegistry``: the process-global one would mix the apps that
tests create in one process. Hooks reach it through the
``Metrics`` object passed to each component; ``None`` there means no metrics.

Every label value comes from a bounded set, so a sender cannot grow the series count: source
and destination ids from the config, canonical event names the config knows (anything else
is "other"), HTTP status codes, and fixed outcome and state names. No label ever carries
user data.
"""

from __future__ import annotations

import collections
import contextlib
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tracklayerd import __version__
from tracklayerd.config import Config
from tracklayerd.errors import StoreUnavailable
from tracklayerd.pipeline.mapping import BUILTIN_RULES
from tracklayerd.segment_wire import MESSAGE_TYPES
from tracklayerd.store.base import PROCESSOR_CURSOR, QUEUED, Exchange, ProcessedEvent, Store
from tracklayerd.store.writer import Writer
from tracklayerd.web import errors

UNKNOWN_SOURCE = "unknown"  # the request named no configured source (bad key, unreadable)
OTHER_EVENT = "other"  # a name that no mapping or destination filter of the config knows
NO_EVENT = "none"  # the record could not be decoded: it has no name
CIRCUIT_STATES = ("closed", "open", "half_open", "paused")
# Attempt outcomes (store.base.Attempt) plus what the processor decides for a destination.
OUTCOMES_AT_PROCESSING = {"suppressed": "suppressed", "observed": "observed",
                          "dead": "filtered"}

# Group commits are one fsync: sub-millisecond on NVMe, tens of ms on slow disks.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0)
# Platform answers: Meta usually 100-500 ms; timeouts reach tens of seconds.
PLATFORM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_SOURCE_KEY = web.RequestKey("tracklayerd.metrics.source", str)


class DestinationWorkers(Protocol):
    """What the scrape reads of the scheduler: its live destinations, their circuits, and
    the clock that stamped the deliveries (created_at)."""

    @property
    def workers(self) -> Mapping[str, _Worker]: ...

    @property
    def clock(self) -> _Clock: ...


class _Worker(Protocol):
    def state(self) -> str: ...


class _Clock(Protocol):
    def now(self) -> float: ...


@runtime_checkable
class QueueSummaryStore(Protocol):
    """A store that can say, per destination, how many deliveries are queued and since when
    the oldest waits (created_at), in one indexed query. Until the store has it, the queue
    depth is counted per destination and the oldest-pending age is not exported."""

    async def queue_summary(self) -> dict[str, tuple[int, float | None]]: ...


def known_event_names(config: Config) -> frozenset[str]:
    """The event label's values: every canonical name the config can produce or filter on."""
    names: set[str] = set(config.mappings)
    if config.pipeline.builtin_mappings:
        names.update(rule.canonical for rule in BUILTIN_RULES)
    names.update(MESSAGE_TYPES)  # identify, group, ... keep their type as their name
    for destination in config.destinations.values():
        names.update(destination.events)
    return frozenset(names)


class Metrics:
    def __init__(self, config: Config) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources = frozenset(config.sources)
        self._events = known_event_names(config)
        registry = self.registry
        self._ingest_children: dict[tuple[str, int], Counter] = {}
        self._ingest_pending: collections.Counter[tuple[str | None, int]] = (
            collections.Counter())
        self.ingest_requests = Counter(
            "tracklayerd_ingest_requests", "Ingest requests answered, by source and HTTP status.",
            ["source", "status"], registry=registry)
        self.events = Counter(
            "tracklayerd_events", "Inbox records processed, by source, canonical event name "
            "and outcome (accepted, duplicate, dropped, invalid).",
            ["source", "event", "status"], registry=registry)
        self.deliveries = Counter(
            "tracklayerd_deliveries", "Delivery attempts and decisions, by destination and "
            "outcome (delivered, retry, rejected, split, filtered, suppressed, observed).",
            ["destination", "outcome"], registry=registry)
        self.platform_requests = Counter(
            "tracklayerd_platform_requests", "Requests to destination platforms, by HTTP "
            "status (transport_error: no answer).", ["destination", "status"], registry=registry)
        self.platform_seconds = Histogram(
            "tracklayerd_platform_request_seconds", "How long platforms took to answer.",
            ["destination"], buckets=PLATFORM_BUCKETS, registry=registry)
        self.commit_seconds = Histogram(
            "tracklayerd_commit_seconds", "Group commit latency of the store's writer "
            "(BEGIN to COMMIT, fsync included).", buckets=COMMIT_BUCKETS, registry=registry)
        Info("tracklayerd_build", "The running version.", registry=registry).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        # Series that exist from the start, so rate() sees their first increment.
        for source in self._sources:
            self.ingest_requests.labels(source, "200")
        for dest_id, dest in config.destinations.items():
            if dest.mode == "live":
                for outcome in ("delivered", "retry", "rejected"):
                    self.deliveries.labels(dest_id, outcome)
                self.platform_seconds.labels(dest_id)

    # -- hooks ----------------------------------------------------------------------------

    def ingest_answered(self, source: str | None, status: int) -> None:
        # Per request, so only a dict update (~0.1 µs); a prometheus child's inc() takes a
        # lock (~1.5 µs with the lookups). The counts reach the counter at each scrape.
        self._ingest_pending[source, status] += 1

    def _flush_ingest(self) -> None:
        pending, self._ingest_pending = self._ingest_pending, collections.Counter()
        for (source, status), count in pending.items():
            key = (self._source_label(source), status)
            child = self._ingest_children.get(key)
            if child is None:
                child = self._ingest_children[key] = self.ingest_requests.labels(
                    key[0], str(status))
            child.inc(count)

    def processed(self, results: Iterable[ProcessedEvent]) -> None:
        """A committed slice of the processor."""
        # Tallied first: labels() takes a lock and costs microseconds, so it runs once per
        # label set, not once per event.
        events: collections.Counter[tuple[str, str, str]] = collections.Counter()
        deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        for result in results:
            # The source of a stored record may have left the config since.
            events[self._source_label(result.source), self._event_label(result.name),
                   result.status] += 1
            for plan in result.deliveries:
                outcome = OUTCOMES_AT_PROCESSING.get(plan.status)
                if outcome is not None:
                    deliveries[plan.destination, outcome] += 1
        for event_labels, count in events.items():
            self.events.labels(*event_labels).inc(count)
        for delivery_labels, count in deliveries.items():
            self.deliveries.labels(*delivery_labels).inc(count)

    def delivery_recorded(self, destination: str, exchanges: Sequence[Exchange]) -> None:
        """Requests and attempts of one batch, once the store has recorded them."""
        outcomes = collections.Counter(a.outcome for e in exchanges for a in e.attempts)
        for outcome, count in outcomes.items():
            self.deliveries.labels(destination, outcome).inc(count)
        for exchange in exchanges:
            if not exchange.sent:
                continue
            if exchange.http_status is not None:
                status = str(exchange.http_status)
            else:
                status = "transport_error" if exchange.error is not None else "no_reply"
            self.platform_requests.labels(destination, status).inc()
            if exchange.duration_ms is not None:
                self.platform_seconds.labels(destination).observe(exchange.duration_ms / 1000)

    def watch_commits(self, store: Store) -> None:
        """Time every group commit of an open SQLite store (other stores: no histogram)."""
        writer = getattr(store, "writer", None)
        if isinstance(writer, Writer):
            # Runs on the writer thread; prometheus-client's metrics take their own lock.
            writer.on_commit_secs = self.commit_seconds.observe

    def _source_label(self, source: str | None) -> str:
        return source if source in self._sources else UNKNOWN_SOURCE

    def _event_label(self, name: str | None) -> str:
        if name is None:
            return NO_EVENT
        return name if name in self._events else OTHER_EVENT

    # -- the scrape -----------------------------------------------------------------------

    async def exposition(
        self, store: Store, scheduler: DestinationWorkers, accept: str
    ) -> tuple[bytes, str]:
        """The body and content type of one scrape, in the format Prometheus asked for."""
        gauges = await scrape_gauges(store, scheduler)
        self._flush_ingest()
        encoder, content_type = choose_encoder(accept)
        return encoder(_Scrape(self.registry, gauges)), content_type


async def scrape_gauges(store: Store, scheduler: DestinationWorkers) -> list[Metric]:
    """Queue depth, oldest pending age and circuit state per live destination, now."""
    destinations = sorted(scheduler.workers)
    circuit = GaugeMetricFamily(
        "tracklayerd_circuit_state", "1 for the current circuit state of each destination.",
        labels=["destination", "state"])
    for dest_id in destinations:
        current = scheduler.workers[dest_id].state()
        for state in CIRCUIT_STATES:
            circuit.add_metric([dest_id, state], 1.0 if state == current else 0.0)
    families: list[Metric] = [circuit]
    # The store's own trouble is logged where it happens; the counters still answer.
    with contextlib.suppress(StoreUnavailable):
        families.extend(await _queue_gauges(store, destinations, scheduler.clock.now()))
        families.extend(await _backlog_gauges(store, time.time()))
    return families


async def _backlog_gauges(store: Store, now: float) -> list[Metric]:
    """What ingest accepted and the processor has not reached yet (docs/operations.md,
    Processing during bursts): it grows during a burst, by design, and must drain after."""
    count, oldest = await store.inbox_backlog(PROCESSOR_CURSOR)
    backlog = GaugeMetricFamily(
        "tracklayerd_inbox_backlog", "Accepted inbox records the processor has not "
        "processed yet.")
    backlog.add_metric([], float(count))
    lag = GaugeMetricFamily(
        "tracklayerd_processing_lag_seconds", "How long the oldest unprocessed inbox record "
        "has waited (0: none waiting).")
    lag.add_metric([], 0.0 if oldest is None else max(0.0, now - oldest))
    return [backlog, lag]


async def _queue_gauges(
    store: Store, destinations: Sequence[str], now: float
) -> list[Metric]:
    depth = GaugeMetricFamily(
        "tracklayerd_queue_depth", "Deliveries waiting to be sent (pending, retrying or in "
        "flight), per destination.", labels=["destination"])
    if not isinstance(store, QueueSummaryStore):
        for dest_id in destinations:
            count = await store.count_deliveries(dest_id, QUEUED, force=True)
            depth.add_metric([dest_id], float(count))
        return [depth]
    age = GaugeMetricFamily(
        "tracklayerd_oldest_pending_age_seconds", "Age of the oldest delivery still waiting "
        "to be sent (0: none waiting), per destination.", labels=["destination"])
    summary = await store.queue_summary()
    for dest_id in destinations:
        count, oldest = summary.get(dest_id, (0, None))
        depth.add_metric([dest_id], float(count))
        age.add_metric([dest_id], 0.0 if oldest is None else max(0.0, now - oldest))
    return [depth, age]


class _Scrape:
    """One scrape's view: the app's registry plus the gauges just read (no shared state, so
    concurrent scrapes cannot see each other's values)."""

    def __init__(self, registry: CollectorRegistry, gauges: list[Metric]) -> None:
        self._registry = registry
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        yield from self._gauges


def note_source(request: web.Request, source_id: str | None) -> None:
    """Attribute an ingest request to the source it authenticated as (None: to none)."""
    if source_id is None:
        request.pop(_SOURCE_KEY, None)
    else:
        request[_SOURCE_KEY] = source_id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counted_ingest(metrics: Metrics | None, handler: Handler) -> Handler:
    """An ingest handler, guarded (web/errors.py), each answer counted by source (see
    note_source) and status. One wrapper for both: each level costs every request."""
    if metrics is None:
        return errors.guarded(handler)

    def answered(request: web.Request, status: int) -> None:
        try:  # not request.get: Mapping.get is one more Python call per request
            source = request[_SOURCE_KEY]
        except KeyError:
            source = None
        metrics.ingest_answered(source, status)

    return errors.guarded(handler, answered)
