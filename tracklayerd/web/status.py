"""The operator status page: `GET /-/status` (HTML) and its JSON twin `GET /-/status.json`.

One page answers "is everything arriving, and is everything getting through": per source
what arrived in the last 24 hours and what was refused or dropped; per destination its mode,
health, queue, outcomes, latency, the platforms' latest answers verbatim, match quality,
consent and ledger suppression, and the latest dead letters, each linking to its trace.

Counts come from SQLite, never from in-memory gauges, so the page is right after a restart;
only the circuit-breaker state is live (it exists only in the running scheduler). The
queries are bounded (store/status_queries.py) so the page stays fast with millions of
stored events. Personal data is redacted as on the trace page; nothing here is logged.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from tracklayerd.config import SOURCE_TYPES, Config
from tracklayerd.ingest.common import json_response
from tracklayerd.pipeline.contracts import CONTRACTS
from tracklayerd.report import build_report
from tracklayerd.scheduler import Scheduler
from tracklayerd.store.base import (
    PROCESSOR_CURSOR,
    QUEUED,
    TERMINAL,
    DeliveryCount,
    EventCount,
    PlatformAnswer,
    QualitySummary,
    RejectCount,
    Store,
)
from tracklayerd.web.auth import admin_only
from tracklayerd.web.redact import redact, redact_text
from tracklayerd.web.status_html import render_status
from tracklayerd.web.trace import iso

_HEADERS = {"Cache-Control": "no-store"}
# The page is self-contained: no scripts, no external anything (as the trace page).
_HTML_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
HOUR = 3600
WINDOW_HOURS = 24
DEAD_LETTERS = 10
ERRORS = 5
WARNINGS = 5
# Warnings ride on accepted answers; only this many of the latest are searched for them.
WARNING_SCAN = 2000
LATENCY_SAMPLE = 1000
# Match quality and cross-source overlaps are summarised over at most this many of the
# latest events: those queries read table rows, and a sample this size puts a share within
# about a percentage point.
SAMPLE_EVENTS = 5000
# The parallel-validation summary reads every event body it counts: a smaller sample.
VALIDATION_EVENTS = 2000
TOP_REASONS = 5
# Canonical events with a contract are the conversions; for those a missing explicit event
# id means the platforms cannot deduplicate them against a browser pixel.
CONVERSIONS = frozenset(CONTRACTS)
EVENT_STATUSES = ("accepted", "dropped", "duplicate", "invalid")
# Health: the acceptance rate below which, and the queue age above which, a live
# destination is "degraded".
MIN_ACCEPTANCE = 0.95
MAX_QUEUE_AGE_SECS = 900.0


def status_handler(config: Config, store: Store, scheduler: Scheduler | None,
                   fmt: str) -> Handler:
    """`GET /-/status` (fmt "html") or `GET /-/status.json` (fmt "json")."""

    async def status(request: web.Request) -> web.StreamResponse:
        # The scheduler's clock stamps finished deliveries: the window must agree with it.
        now = scheduler.clock.now() if scheduler is not None else time.time()
        document = await status_document(config, store, scheduler, now)
        if fmt == "json":
            return json_response(200, document, headers=_HEADERS)
        return web.Response(text=render_status(document), content_type="text/html",
                            charset="utf-8", headers=_HTML_HEADERS)

    return admin_only(status)


async def status_document(
    config: Config, store: Store, scheduler: Scheduler | None, now: float
) -> dict[str, Any]:
    until = (int(now) // HOUR + 1) * HOUR
    since = until - WINDOW_HOURS * HOUR
    hours = [since + i * HOUR for i in range(WINDOW_HOURS)]
    sample_since = await store.recent_events_since(SAMPLE_EVENTS, since)

    event_counts = await store.event_counts(since)
    source_ids = list(config.sources)
    source_ids += sorted({c.source for c in event_counts} - set(source_ids))
    rejects = await store.reject_counts(source_ids, since)
    sources = [_source(sid, _source_type(config, sid), event_counts, rejects, hours)
               for sid in source_ids]

    destination_ids = list(config.destinations)
    counts = await store.delivery_counts(destination_ids, since)
    totals = await store.delivery_totals(destination_ids)
    suppressed = await store.suppression_counts(destination_ids, since)
    quality = await store.quality_sample(sample_since)
    destinations = []
    for dest_id in destination_ids:
        dest = config.destinations[dest_id]
        destinations.append(await _destination(
            store, scheduler, dest_id, dest.type, dest.mode, now, since, hours,
            [c for c in counts if c.destination == dest_id],
            [c for c in totals if c.destination == dest_id],
            {s.rule: s.count for s in suppressed if s.destination == dest_id},
            [q for q in quality if q.destination == dest_id], sample_since))

    overlaps = await store.dedup_overlaps(sample_since)
    backlog, oldest = await store.inbox_backlog(PROCESSOR_CURSOR)
    return {
        "generated_at": iso(now),
        "window": {"since": iso(since), "until": iso(until), "hours": WINDOW_HOURS,
                   "hour_starts": [iso(h) for h in hours]},
        "sources": sources,
        # Accepted and not processed yet: grows during a burst by design (ingest first).
        "processing": {"backlog": backlog,
                       "oldest_unprocessed_at": None if oldest is None else iso(oldest),
                       "lag_secs": None if oldest is None else round(max(0.0, now - oldest), 3)},
        "destinations": destinations,
        "dedup": {
            "duplicates": sum(s["duplicate"] for s in sources),
            "overlaps_since": iso(sample_since),
            "overlaps": [{"first_source": o.first_source, "duplicate_source": o.duplicate_source,
                          "event": o.event, "count": o.count} for o in overlaps],
        },
        "validation": await _validation(store, since),
    }


_SOURCE_TYPE_NAMES = {cls: name for name, cls in SOURCE_TYPES.items()}


def _source_type(config: Config, source_id: str) -> str | None:
    source = config.sources.get(source_id)
    return None if source is None else _SOURCE_TYPE_NAMES.get(type(source))


# -- sources ------------------------------------------------------------------------------------


def _source(source_id: str, source_type: str | None, counts: Sequence[EventCount],
            rejects: Sequence[RejectCount], hours: list[int]) -> dict[str, Any]:
    mine = [c for c in counts if c.source == source_id]
    by_status = Counter[str]()
    received = dict.fromkeys(hours, 0)
    dropped = Counter[str]()
    conversions: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in mine:
        by_status[c.status] += c.count
        if c.hour in received:
            received[c.hour] += c.count
        if c.status == "dropped":
            # A sender's own event name, which could be anything.
            dropped[redact_text(c.name or "(none)")] += c.count
        if c.status == "accepted" and c.name in CONVERSIONS:
            pair = conversions[c.name]
            pair[0] += c.count
            if not c.explicit:
                pair[1] += c.count
    rejected = dict.fromkeys(hours, 0)
    reasons: dict[str, list[float]] = {}
    for r in rejects:
        if r.source != source_id:
            continue
        if r.reason is None:
            if r.hour in rejected:
                rejected[r.hour] += r.count
            continue
        # Our own words, but they may quote a sender's field; shown like the trace shows.
        reason = redact_text(r.reason)
        seen = reasons.setdefault(reason, [0, 0.0])
        seen[0] += r.count
        seen[1] = max(seen[1], r.last_at or 0.0)
    accepted = sum(pair[0] for pair in conversions.values())
    without = sum(pair[1] for pair in conversions.values())
    return {
        "id": source_id,
        "type": source_type,
        "received": sum(by_status.values()),
        **{status: by_status.get(status, 0) for status in EVENT_STATUSES},
        "rejected": sum(rejected.values()),
        "hourly": {"received": list(received.values()), "rejected": list(rejected.values())},
        "rejects": [{"reason": reason, "count": int(n), "last_at": iso(last)}
                    for reason, (n, last) in sorted(reasons.items(),
                                                    key=lambda kv: (-kv[1][0], kv[0]))
                    ][:TOP_REASONS],
        "dropped_events": [{"event": name, "count": n}
                           for name, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
                           ][:TOP_REASONS * 2],
        "conversions": {
            "accepted": accepted,
            "without_event_id": without,
            "share_without_event_id": _ratio(without, accepted),
            "by_event": [{"event": name, "accepted": pair[0], "without_event_id": pair[1]}
                         for name, pair in sorted(conversions.items())],
        },
    }


# -- destinations -------------------------------------------------------------------------------


async def _destination(
    store: Store, scheduler: Scheduler | None, dest_id: str, dest_type: str, mode: str,
    now: float, since: int, hours: list[int], counts: Sequence[DeliveryCount],
    totals: Sequence[DeliveryCount], suppressed: dict[str | None, int],
    quality: Sequence[QualitySummary], sample_since: float,
) -> dict[str, Any]:
    window = dict.fromkeys(TERMINAL, 0)
    hourly = {status: dict.fromkeys(hours, 0) for status in ("delivered", "dead", "observed")}
    queue: dict[str, Any] = dict.fromkeys(QUEUED, 0)
    oldest: float | None = None
    for c in counts:
        if c.hour is None:
            queue[c.status] = queue.get(c.status, 0) + c.count
            if c.oldest is not None:
                oldest = c.oldest if oldest is None else min(oldest, c.oldest)
            continue
        window[c.status] = window.get(c.status, 0) + c.count
        series = hourly.get(c.status)
        if series is not None and c.hour in series:
            series[c.hour] += c.count
    queue["oldest_created_at"] = iso(oldest)
    failed_requests = dict.fromkeys(hours, 0)
    for hour, n in await store.failed_request_counts(dest_id, since):
        if hour in failed_requests:
            failed_requests[hour] += n
    latencies = sorted(await store.delivery_latencies(dest_id, since, LATENCY_SAMPLE))
    errors = await store.platform_errors(dest_id, since, ERRORS)
    warnings = await store.platform_warnings(dest_id, since, WARNINGS, WARNING_SCAN)
    last = await store.last_request(dest_id)
    dead = await store.dead_letters(dest_id, DEAD_LETTERS)
    circuit = _circuit(scheduler, dest_id, now)
    acceptance = _ratio(window["delivered"], window["delivered"] + window["dead"])
    health, reasons = _health(mode, circuit, last, queue, oldest, acceptance, now)
    ledger = suppressed.pop(None, 0)
    return {
        "id": dest_id,
        "type": dest_type,
        "mode": mode,
        "health": health,
        "health_reasons": reasons,
        "circuit": circuit,
        "queue": queue,
        "last_24h": window,
        "totals": {status: sum(t.count for t in totals if t.status == status)
                   for status in (*TERMINAL, *QUEUED)},
        "acceptance_rate": acceptance,
        "latency_secs": {"p50": _percentile(latencies, 0.50),
                         "p95": _percentile(latencies, 0.95), "sample": len(latencies)},
        "hourly": {"delivered": list(hourly["delivered"].values()),
                   "observed": list(hourly["observed"].values()),
                   "dead": list(hourly["dead"].values()),
                   "failed_requests": list(failed_requests.values())},
        "last_request": None if last is None else {
            "at": iso(last.at), "http_status": last.http_status,
            "ok": _ok(last), "error": _text(last.error)},
        "errors": [_platform_answer(a) for a in errors],
        "warnings": [_platform_answer(a) for a in warnings],
        "match_quality": _quality(quality, sample_since),
        "consent": {
            "suppressed": sum(suppressed.values()),
            "by_rule": [{"rule": rule, "count": n}
                        for rule, n in sorted(suppressed.items(),
                                              key=lambda kv: (-kv[1], kv[0] or ""))],
        },
        "dedup": {"ledger_suppressed": ledger},
        "dead_letters": [
            {"event": d.event_row, "trace": f"/-/events/{d.event_row}", "source": d.source,
             "name": _text(d.name), "at": iso(d.at), "attempts": d.attempts,
             "reason": _text(d.reason)}
            for d in dead
        ],
    }


def _circuit(scheduler: Scheduler | None, dest_id: str, now: float) -> dict[str, Any] | None:
    """The live breaker state; None when no worker sends for this destination (observe,
    off, or a process without a scheduler)."""
    worker = None if scheduler is None else scheduler.workers.get(dest_id)
    if worker is None:
        return None
    state = worker.state()
    paused = worker.stats.paused_until
    return {
        "state": state,
        "failures_in_a_row": worker.breaker.failures,
        "open_until": iso(worker.breaker.open_until) if state == "open" else None,
        "paused_until": iso(paused) if paused > now else None,
        "last_error": _text(worker.stats.last_error),
    }


def _health(mode: str, circuit: dict[str, Any] | None, last: PlatformAnswer | None,
            queue: dict[str, Any], oldest: float | None, acceptance: float | None,
            now: float) -> tuple[str, list[str]]:
    """ok | degraded | failing | paused | observing | off, and why (docs/status.md)."""
    if mode == "off":
        return "off", ["mode is off: no deliveries are made"]
    if mode == "observe":
        return "observing", ["observe mode: payloads are built and stored, nothing is sent"]
    reasons: list[str] = []
    health = "ok"
    state = None if circuit is None else circuit["state"]
    if state in ("open", "half_open"):
        health = "failing"
        reasons.append(f"circuit {state.replace('_', '-')} after "
                       f"{circuit['failures_in_a_row'] if circuit else 0} failed requests in a row")
    elif state == "paused":
        health = "paused"
        until = circuit["paused_until"] if circuit else None
        reasons.append(f"rate-limited by the platform until {until}")
    if last is not None and not _ok(last):
        if health == "ok":
            health = "degraded"
        status = f"HTTP {last.http_status}" if last.http_status is not None else "no answer"
        reasons.append(f"the latest request failed ({status})")
    if acceptance is not None and acceptance < MIN_ACCEPTANCE:
        if health == "ok":
            health = "degraded"
        reasons.append(f"acceptance {acceptance:.1%} over 24 h (below {MIN_ACCEPTANCE:.0%})")
    if oldest is not None and now - oldest > MAX_QUEUE_AGE_SECS:
        if health == "ok":
            health = "degraded"
        waiting = sum(queue.get(s, 0) for s in QUEUED)
        reasons.append(f"{waiting} deliveries queued, the oldest for "
                       f"{(now - oldest) / 60:.0f} min")
    return health, reasons


def _quality(summaries: Sequence[QualitySummary], sample_since: float) -> dict[str, Any] | None:
    if not summaries:
        return None
    total = sum(q.deliveries for q in summaries)
    bands = [sum(q.bands[i] for q in summaries) for i in range(5)]
    missing = Counter[str]()
    for q in summaries:
        for kind, n in q.top_missing:
            missing[kind] += n
    return {
        "since": iso(sample_since),
        "deliveries": total,
        "mean": round(sum(q.mean * q.deliveries for q in summaries) / total, 2) if total else None,
        "bands": dict(zip(("0-2", "2-4", "4-6", "6-8", "8-10"), bands, strict=True)),
        "top_missing": [{"identifier": kind, "deliveries": n}
                        for kind, n in sorted(missing.items(), key=lambda kv: (-kv[1], kv[0]))
                        ][:TOP_REASONS],
        "by_event": [{"event": q.event, "deliveries": q.deliveries, "mean": q.mean}
                     for q in summaries],
    }


def _platform_answer(answer: PlatformAnswer) -> dict[str, Any]:
    return {"at": iso(answer.at), "http_status": answer.http_status,
            "response": _verbatim(answer.response), "error": _text(answer.error)}


def _verbatim(response: str | None) -> str | None:
    """The platform's answer as it came, unless it holds personal data (a receiver that
    echoes the event back): then the same JSON with those values redacted."""
    if response is None:
        return None
    try:
        decoded = msgspec.json.decode(response)
    except (msgspec.DecodeError, RecursionError):
        return redact_text(response)
    redacted = redact(decoded)
    if redacted == decoded:
        return response
    return msgspec.json.encode(redacted).decode()


def _ok(answer: PlatformAnswer) -> bool:
    return answer.http_status is not None and 200 <= answer.http_status <= 299


def _text(value: str | None) -> str | None:
    return None if value is None else redact_text(value)


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)


# -- parallel validation ------------------------------------------------------------------------


async def _validation(store: Store, since: float) -> dict[str, Any]:
    """The parallel-validation report (tracklayerd/report.py) over the latest events: it
    reads every delivery and event body it counts, so the page takes a recent sample; any
    window, and the reconciliation against the old route's export, is `tracklayerd report`."""
    sample_since = await store.recent_events_since(VALIDATION_EVENTS, since)
    report = await build_report(store, since=sample_since, until=None)
    return {
        "since": iso(sample_since),
        "note": "the latest events only; for any window and a reconciliation with the old "
                "route's export run `tracklayerd report --since T [--against FILE]`",
        "events": msgspec.to_builtins(report.events),
        "destinations": msgspec.to_builtins(report.totals),
    }
