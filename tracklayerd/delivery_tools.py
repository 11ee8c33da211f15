"""What ``tracklayerd preview``, ``replay`` and ``send-test`` do; cli.py only prints.

``preview`` runs one event through the same steps as the server (ingest's inbox row, the
processor's pipeline, the destination's stored encoding and request), so the body it prints
is the body that would be sent. ``replay`` re-queues deliveries in the store; the running
server's scheduler picks them up. ``send-test`` sends one controlled purchase, bypassing the
store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from tracklayerd.config import (
    Config,
    DestinationConfig,
    HttpApiSource,
    RudderstackWebhookSource,
    SegmentSource,
    SegmentWebhookSource,
    Source,
)
from tracklayerd.destinations.base import (
    Delivered,
    Destination,
    Outcome,
    Rejected,
    RetryLater,
    TransportError,
)
from tracklayerd.destinations.registry import create_destinations, destination_platform
from tracklayerd.events import (
    Context,
    Event,
    Identity,
    Item,
    NativeBatch,
    derived_event_id,
    native_decoder,
)
from tracklayerd.ingest.common import validation_problem
from tracklayerd.ingest.http_api import KIND as NATIVE_KIND
from tracklayerd.ingest.segment import ORIGIN as TRACKING_API_ORIGIN
from tracklayerd.ingest.segment_messages import BatchFields, Prepared, prepare
from tracklayerd.ingest.webhooks import split_events
from tracklayerd.pipeline.quality import PLATFORMS, identifiers_present, score
from tracklayerd.processor import Pipeline
from tracklayerd.scheduler import POLL_SECS
from tracklayerd.segment_wire import batch_probe_decoder
from tracklayerd.store.base import InboxRecord, ProcessedEvent, Store

REPLAY_CHUNK = 1000
REPLAYABLE = ("dead", "retrying", "observed", "delivered", "suppressed")
# Sending these again is what the delivery ledger prevents: only with --force.
FORCE_ONLY = ("delivered", "suppressed")
TEST_SOURCE = "tracklayerd-send-test"


class UsageProblem(Exception):
    """The command cannot run as given (unknown id, a type that cannot send, a refused
    option); the message says what to change. Exit status 2, like click's usage errors."""


class Refused(Exception):
    """The input would be refused or never sent; the message says why. Exit status 1."""


def destination_config(config: Config, destination_id: str) -> DestinationConfig:
    dest = config.destinations.get(destination_id)
    if dest is None:
        known = ", ".join(sorted(config.destinations)) or "none"
        raise UsageProblem(f"no destination {destination_id!r} in the config "
                           f"(configured: {known})")
    return dest


def make_destination(config: Config, destination_id: str,
                     dest: DestinationConfig) -> Destination:
    """The destination as the server builds it, from `dest` (a possibly modified copy)."""
    made = create_destinations(msgspec.structs.replace(config,
                                                       destinations={destination_id: dest}))
    destination = made.get(destination_id)
    if destination is None:
        raise UsageProblem(f"destination {destination_id} (type {dest.type}) cannot send in "
                           "this version: it has no encoder")
    return destination


# --- preview -------------------------------------------------------------------------------


@dataclass
class Preview:
    body: bytes | None = None  # the request body; None when nothing would be sent
    notes: list[str] = field(default_factory=list)  # for stderr, in order
    refused: str | None = None  # why it would not be sent (exit status 1)


class _BatchKey(msgspec.Struct):
    batch: Any = None


_batch_key_decoder = msgspec.json.Decoder(_BatchKey)


def inbox_record(source_id: str, source: Source, raw: bytes, received_at: float) -> InboxRecord:
    """The inbox row ingest would store for one event of this source's format.

    Built with the ingest modules' own functions and conventions (kind, message id, payload
    bytes); there is no HTTP request, so there is no request IP or User-Agent.
    """
    if isinstance(source, HttpApiSource):
        return _native_record(source_id, source, raw, received_at)
    if isinstance(source, SegmentSource):
        try:
            is_batch = _batch_key_decoder.decode(raw).batch is not None
        except msgspec.ValidationError:
            is_batch = False  # not an object: prepare() says what is wrong with it
        except msgspec.DecodeError as exc:
            raise Refused(f"malformed JSON: {exc}") from None
        if is_batch:
            try:
                envelope = batch_probe_decoder.decode(raw)
            except msgspec.MsgspecError as exc:
                raise Refused(f"invalid body: {exc}") from None
            assert envelope.batch is not None
            prepared = prepare(
                _one(envelope.batch, "batch"),
                BatchFields(origin=TRACKING_API_ORIGIN, context=envelope.context,
                            integrations=envelope.integrations, sent_at=envelope.sentAt),
                source_id=source_id, received_at=received_at, request_ip=None,
                max_event_bytes=source.max_event_bytes)
        else:
            prepared = prepare([raw], BatchFields(origin=TRACKING_API_ORIGIN),
                               source_id=source_id, received_at=received_at, request_ip=None,
                               max_event_bytes=source.max_event_bytes)
        return _prepared_record(prepared)
    assert isinstance(source, SegmentWebhookSource | RudderstackWebhookSource)
    # As WebhookIngest: what Segment / RudderStack forward, stored with their origin.
    origin = ("segment_webhook" if isinstance(source, SegmentWebhookSource)
              else "rudderstack_webhook")
    try:
        events = split_events(raw)
    except msgspec.DecodeError as exc:
        problem = ("expected an event, an array of events or {\"batch\": [...]}"
                   if isinstance(exc, msgspec.ValidationError) else "malformed JSON")
        raise Refused(f"{problem}: {exc}") from None
    prepared = prepare(_one(events, "request"), BatchFields(origin=origin), source_id=source_id,
                       received_at=received_at, request_ip=None,
                       max_event_bytes=source.max_event_bytes)
    return _prepared_record(prepared)


def _one(raws: list[msgspec.Raw], what: str) -> list[msgspec.Raw]:
    if len(raws) != 1:
        raise UsageProblem(f"preview takes one event; the {what} has {len(raws)}")
    return raws


def _native_record(
    source_id: str, source: HttpApiSource, raw: bytes, received_at: float
) -> InboxRecord:
    try:
        native_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raw = _only_event_of_batch(raw, exc)
    except msgspec.DecodeError as exc:
        raise Refused(f"malformed JSON: {exc}") from None
    if len(raw) > source.max_event_bytes:
        raise Refused(f"event is {len(raw)} bytes; the limit is {source.max_event_bytes}")
    event = native_decoder.decode(raw)
    return InboxRecord(seq=0, source=source_id,
                       message_id=event.event_id or derived_event_id(raw), kind=NATIVE_KIND,
                       received_at=received_at, payload=raw)


def _only_event_of_batch(raw: bytes, single_error: msgspec.ValidationError) -> bytes:
    """As NativeIngest: not one event, so maybe {"events": [...]} (here with exactly one)."""
    try:
        raws = msgspec.json.decode(raw, type=NativeBatch).events
    except msgspec.MsgspecError:
        path, message = validation_problem(single_error)
        raise Refused(f"invalid event: {path}: {message}") from None
    event = bytes(_one(raws, "batch")[0])
    try:
        native_decoder.decode(event)
    except msgspec.DecodeError as exc:
        path, message = validation_problem(exc, "$.events[0]")
        raise Refused(f"invalid event: {path}: {message}") from None
    return event


def _prepared_record(prepared: Prepared) -> InboxRecord:
    if prepared.rejected:
        raise Refused(prepared.rejected[0][1])
    (row,) = prepared.rows
    return InboxRecord(seq=0, **msgspec.structs.asdict(row))


def preview(config: Config, source_id: str, destination_id: str, raw: bytes,
            now: float | None = None) -> Preview:
    """What `destination_id` would be sent for one event received on `source_id`."""
    source = config.sources.get(source_id)
    if source is None:
        known = ", ".join(sorted(config.sources)) or "none"
        raise UsageProblem(f"no source {source_id!r} in the config (configured: {known})")
    dest = destination_config(config, destination_id)
    # Every mode previews: "off" and "observe" are what people check before going live.
    live = msgspec.structs.replace(dest, mode="live")
    destination = make_destination(config, destination_id, live)
    now = time.time() if now is None else now
    result = Preview()
    if dest.mode != "live":
        result.notes.append(f"note: destination {destination_id} is in mode {dest.mode}: "
                            "this is what it would send in mode live")
    try:
        record = inbox_record(source_id, source, raw, now)
    except Refused as exc:
        result.refused = f"ingest would refuse it: {exc}"
        return result
    pipeline = Pipeline(msgspec.structs.replace(config, destinations={destination_id: live}),
                        {destination_id: destination})
    staged = pipeline.prepare(record)
    if isinstance(staged, ProcessedEvent):
        result.refused = f"the event is {staged.status}: {staged.reason}"
        return result
    if config.identity.enabled:
        result.notes.append("note: identity stitching not applied in preview (it needs the "
                            "store): identifiers from earlier events of the person are missing")
    result.notes.append("note: deduplication and the delivery ledger are not checked in "
                        "preview (they need the store)")
    event = staged
    result.notes.append(f"event: {event.event} ({event.message_type}), event id {event.event_id}")
    result.notes += [f"contract violation: {v}" for v in event.violations]
    result.notes += [f"event warning: {w}" for w in event.warnings]
    (plan,) = pipeline.finish(record, event).deliveries
    result.notes += [f"{destination_id} warning: {w}" for w in plan.warnings]
    result.notes += match_quality_lines(event, dest.type)
    # The mode was forced to live, so anything but pending is a decision not to send.
    if plan.payload is None or plan.status != "pending":
        result.refused = f"{destination_id} would not send it: {plan.reason or plan.status}"
        return result
    too_old = _outside_time_limits(destination, event, now)
    if too_old is not None:
        result.refused = f"{destination_id} would not send it: {too_old}"
        return result
    request = destination.build_request([plan.payload])
    # Headers, not the URL: a URL may carry a token. Secret headers are added only at send.
    headers = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
    result.notes.append(f"request: {request.method}, headers {headers or 'none'}")
    result.body = request.body
    return result


def match_quality_lines(event: Event, destination_type: str) -> list[str]:
    platform = destination_platform(destination_type)
    if platform not in PLATFORMS:
        return []
    quality = score(identifiers_present(event), platform)
    present = ", ".join(f"{kind} +{points:g}" for kind, points in quality.breakdown.items())
    lines = [f"match quality ({platform}, tracklayerd's model): {quality.score:g}/10",
             f"  present: {present or 'nothing a platform matches on'}"]
    lines += [f"  missing: {m.kind} +{m.points:g}: {m.how_to}" for m in quality.missing]
    return lines


def _outside_time_limits(destination: Destination, event: Event, now: float) -> str | None:
    # The scheduler dead-letters these before sending (scheduler._too_old_or_new).
    limits = destination.limits
    when = event.timestamp.timestamp()
    if limits.max_age_secs is not None and now - when > limits.max_age_secs:
        return (f"event time is {(now - when) / 86400:.1f} days ago; the platform accepts at "
                f"most {limits.max_age_secs / 86400:g} days")
    if limits.max_future_secs is not None and when - now > limits.max_future_secs:
        return (f"event time is {when - now:.0f} s in the future; the platform accepts at "
                f"most {limits.max_future_secs:.0f} s")
    return None


# --- replay --------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """ISO 8601 (no offset: UTC) or a duration back from now (`90m`, `24h`, `7d`)."""
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2026-01-31T12:00:00Z) nor "
                         "a duration (30m, 24h, 7d)") from None
    return (when.replace(tzinfo=UTC) if when.tzinfo is None else when).timestamp()


def replay_notes(config: Config, destination_id: str, statuses: Sequence[str],
                 force: bool) -> list[str]:
    """Refuse what needs --force; the warnings worth reading first."""
    dest = destination_config(config, destination_id)
    forced = [status for status in statuses if status in FORCE_ONLY]
    if forced and not force:
        raise UsageProblem(f"--status {forced[0]} needs --force: those event ids were "
                           "delivered already, and the platform receives them again "
                           "(it deduplicates only within its own window)")
    make_destination(config, destination_id, dest)  # one that cannot send would wait forever
    notes: list[str] = []
    if "observed" in statuses:
        notes.append(f"warning: observed deliveries become real sends: {destination_id} "
                     "receives events recorded in observe mode, with their original event "
                     "times (events older than the platform accepts become dead letters)")
    if dest.mode != "live":
        notes.append(f"warning: destination {destination_id} is in mode {dest.mode}: the "
                     "server sends re-queued deliveries only once it is live")
    return notes


def store_path(config: Config, data_dir: Path) -> Path:
    path = Path(config.storage.path)
    return path if path.is_absolute() else data_dir / path


async def requeue_all(store: Store, destination_id: str, statuses: Sequence[str],
                      since: float | None, rebuild: bool, force: bool, total: int,
                      progress: Callable[[int], None]) -> int:
    """Re-queue up to `total` deliveries in chunks; returns how many."""
    done = 0
    # Bounded by the count taken before: if the running server dead-letters a re-queued
    # delivery again meanwhile, it is not picked up a second time.
    while done < total:
        count = await store.requeue(destination_id, statuses, since, time.time(),
                                    rebuild=rebuild, limit=min(REPLAY_CHUNK, total - done),
                                    force=force)
        if count == 0:
            break
        done += count
        progress(count)
    return done


def deliveries(count: int) -> str:
    return f"{count} {'delivery' if count == 1 else 'deliveries'}"


def replay_summary(count: int, destination_id: str) -> str:
    if count == 0:
        return "nothing to re-queue"
    return (f"re-queued {deliveries(count)} of {destination_id}; a running server sends "
            f"them within {POLL_SECS:g} s (its scheduler checks the store that often)")


# --- send-test -----------------------------------------------------------------------------


def send_test_destination(config: Config, destination_id: str, test_event_code: str | None,
                          live: bool) -> tuple[Destination, list[str]]:
    """The destination to send the test to, and notes for stderr."""
    dest = destination_config(config, destination_id)
    has_code = "test_event_code" in {f.name for f in msgspec.structs.fields(type(dest))}
    notes: list[str] = []
    if test_event_code is not None:
        if not has_code:
            raise UsageProblem(f"destination type {dest.type} has no test event code")
        if not test_event_code.strip():
            raise UsageProblem("--test-event-code is empty")
        dest = msgspec.structs.replace(dest, test_event_code=test_event_code)
    if has_code:
        code = getattr(dest, "test_event_code", None)
        if code is None and not live:
            raise UsageProblem(
                f"destination {destination_id} has no test_event_code: the test purchase "
                "would count as a real conversion. Give --test-event-code CODE (Events "
                "Manager → Test Events), or --live to send it anyway")
        if code is None:
            notes.append("warning: sending without a test event code: the platform counts "
                         "this test purchase as a real conversion")
        else:
            notes.append(f"test event code {code}: the events show under Test Events")
    if dest.mode != "live":
        notes.append(f"note: destination {destination_id} is in mode {dest.mode}; "
                     "send-test sends anyway")
    return make_destination(config, destination_id, dest), notes


def send_test_events(now: float) -> list[Event]:
    """An identify and a purchase with obviously fake data. Ad platforms take no identify
    call, so the identify's identifiers ride on the purchase too."""
    stamp = int(now)
    when = datetime.fromtimestamp(now, tz=UTC)
    user = Identity(email="test@example.com", external_id="tracklayerd-test-user",
                    first_name="Test", last_name="Tracklayerd")
    context = Context(ip="192.0.2.1", user_agent="tracklayerd-send-test",
                      page_url="https://example.com/tracklayerd-send-test")
    common: dict[str, Any] = {"timestamp": when, "received_at": when, "source": TEST_SOURCE,
                              "user": user, "context": context}
    return [
        Event(event="identify", message_type="identify",
              event_id=f"tracklayerd-test-{stamp}-identify", **common),
        Event(event="purchase", event_id=f"tracklayerd-test-{stamp}-purchase",
              order_id=f"tracklayerd-test-{stamp}", value=1.00, currency="USD",
              items=[Item(id="tracklayerd-test-item", name="tracklayerd test item",
                          price=1.00, quantity=1)], **common),
    ]


@dataclass
class SendTest:
    lines: list[str] = field(default_factory=list)  # the platform's answer, for stdout
    notes: list[str] = field(default_factory=list)  # for stderr
    delivered: bool = False


async def send_test(destination: Destination, events: Sequence[Event]) -> SendTest:
    """Encode and send the events in one request (never through the store)."""
    try:
        return await _send_test(destination, events)
    finally:
        await destination.close()


async def _send_test(destination: Destination, events: Sequence[Event]) -> SendTest:
    result = SendTest()
    payloads: list[bytes] = []
    sent: list[Event] = []
    for event in events:
        encoded = destination.encode(event)
        result.notes += [f"{event.event} warning: {w}" for w in encoded.warnings]
        if encoded.payload is None:
            result.notes.append(f"{event.event}: not sent: {encoded.rejected}")
        else:
            payloads.append(encoded.payload)
            sent.append(event)
    if not payloads:
        result.lines.append("nothing to send: the destination refused every test event")
        return result
    names = ", ".join(f"{e.event} (event id {e.event_id})" for e in sent)
    result.notes.append(f"sending to {destination.id} in one request: {names}")
    try:
        outcomes = list(await destination.send(payloads))
    except TransportError as exc:
        result.lines.append(f"no answer: {exc}")
        return result
    reply = next((o.reply for o in outcomes if o.reply is not None), None)
    if reply is None:
        result.lines.append("no HTTP reply recorded")
    else:
        result.lines += [f"HTTP {reply.status}", reply.body]
    result.lines += [f"{e.event}: {describe(o)}" for e, o in zip(sent, outcomes, strict=False)]
    result.delivered = len(outcomes) == len(sent) and all(
        isinstance(o, Delivered) for o in outcomes)
    return result


def describe(outcome: Outcome) -> str:
    if isinstance(outcome, Delivered):
        return "delivered"
    if isinstance(outcome, RetryLater):
        return f"would be retried: {outcome.reason}"
    assert isinstance(outcome, Rejected)
    return f"rejected: {outcome.reason}"
