"""The store interface: everything outside ``tracklayerd.store`` talks to this, never to SQL.

A PostgreSQL backend for multi-process deployments will implement the same Protocol, so
nothing here may assume SQLite.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec


class InboxRow(msgspec.Struct, kw_only=True):
    """One accepted message, stored raw before any pipeline code runs."""

    source: str
    message_id: str
    kind: str  # the decoder that reads payload ("native", "segment", ...)
    received_at: float  # unix seconds
    payload: bytes
    request_ip: str | None = None


class InboxRecord(InboxRow, kw_only=True):
    seq: int


class DeliveryPlan(msgspec.Struct):
    destination: str
    status: str  # initial state: pending, observed, or dead (the platform would refuse it)
    reason: str | None = None
    # Match quality for the destination's platform (0-10) and its top missing identifiers.
    match_quality: float | None = None
    match_missing: list[str] = []
    # The event as the platform takes it (destinations/base.py Encoded.payload).
    payload: bytes | None = None
    warnings: list[str] = []
    # The consent decision for this destination (pipeline/consent.py ConsentDecision, JSON).
    consent: bytes | None = None


QUEUED = ("pending", "retrying", "in_flight")
# The processor's position in the inbox (the last record it processed), in `cursors`.
PROCESSOR_CURSOR = "processor"
TERMINAL = ("delivered", "dead", "suppressed", "observed")


class LeasedDelivery(msgspec.Struct, kw_only=True):
    """A delivery taken for sending; its lease expires at next_attempt_at."""

    id: int
    event_row: int
    attempts: int
    created_at: float
    occurred_at: float | None
    payload: bytes | None  # None: encode it from the stored event (see event_bodies)


class Attempt(msgspec.Struct, kw_only=True):
    delivery: int
    outcome: str  # delivered | retry | rejected | split | filtered
    reason: str | None = None


class Exchange(msgspec.Struct, kw_only=True):
    """One request to a platform (or none, for decisions made without sending) and the
    attempt it was for each delivery in it."""

    destination: str
    attempts: list[Attempt]
    started_at: float
    duration_ms: float | None = None
    http_status: int | None = None
    response: str | None = None
    error: str | None = None
    sent: bool = True  # False: no request was made (filtered before sending)


class DeliveryUpdate(msgspec.Struct, kw_only=True):
    """A leased delivery's new state after its attempt(s)."""

    id: int
    status: str  # delivered | retrying | dead
    next_attempt_at: float
    reason: str | None = None
    tried: bool = True  # False: decided without sending (attempts is not increased)


class AttemptRecord(msgspec.Struct, kw_only=True):
    at: float
    outcome: str
    reason: str | None
    request: int | None
    http_status: int | None
    duration_ms: float | None
    response: str | None
    error: str | None


class DeliveryRecord(msgspec.Struct, kw_only=True):
    id: int
    destination: str
    status: str
    attempts: int
    next_attempt_at: float
    reason: str | None
    created_at: float | None
    finished_at: float | None
    match_quality: float | None
    match_missing: list[str]
    payload: bytes | None
    warnings: list[str]
    history: list[AttemptRecord] = []
    consent: bytes | None = None  # the consent decision (JSON)


class QualitySummary(msgspec.Struct):
    """Match quality of one destination and canonical event, for the status page."""

    destination: str
    event: str
    deliveries: int
    mean: float
    # Deliveries per score band: [0,2), [2,4), [4,6), [6,8), [8,10].
    bands: list[int]
    # The identifiers most often missing, most frequent first: (kind, deliveries lacking it).
    top_missing: list[tuple[str, int]]


class ProcessedEvent(msgspec.Struct, kw_only=True):
    """The processor's result for one inbox record, written atomically with its deliveries."""

    inbox_seq: int
    source: str
    event_id: str
    status: str  # accepted | dropped | invalid
    received_at: float
    name: str | None = None
    reason: str | None = None
    occurred_at: float | None = None
    body: bytes | None = None
    deliveries: list[DeliveryPlan] = []
    # Business deduplication: the key this event claims (when it is the first within the
    # window), or the event row it repeats (status "duplicate").
    dedup_key: str | None = None
    duplicate_of: int | None = None
    explicit_id: bool = False  # the sender set the event id (pixel deduplication works)


class Overlap(msgspec.Struct, frozen=True):
    first_source: str
    duplicate_source: str
    event: str
    count: int


class ExplicitIdShare(msgspec.Struct, frozen=True):
    source: str
    event: str
    accepted: int
    explicit: int


class IdentityNode(msgspec.Struct):
    """One identifier of a person in the identity graph (emails and phones as SHA-256)."""

    kind: str
    value: str
    person: int
    first_seen: float
    last_seen: float
    first_event: int
    last_event: int


class IdentityChanges(msgspec.Struct):
    nodes: list[IdentityNode] = []  # upserted as they are
    relabels: list[tuple[int, int]] = []  # (old person, new person), applied first


class ForgetReport(msgspec.Struct):
    identity_nodes: int = 0
    events: int = 0
    inbox_rows: int = 0
    deliveries: int = 0


class StoredEvent(msgspec.Struct, kw_only=True):
    id: int
    inbox_seq: int
    source: str
    event_id: str
    status: str
    name: str | None
    reason: str | None
    body: bytes | None


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """False when the store can no longer write at all (e.g. its writer died)."""

    def ingest_waiting(self) -> bool:
        """True while inbox appends are queued for commit (senders are waiting)."""

    def on_inbox_append(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) after a commit that added inbox rows."""

    def append_inbox(
        self, rows: Sequence[InboxRow], commit_timeout: float | None = None
    ) -> Awaitable[int]:
        """Durably store rows; duplicates of (source, message_id) are ignored. The rows
        are submitted by the call; awaiting the result waits for their COMMIT.

        Gives how many were new. Raises StoreUnavailable when it cannot commit, or not
        within commit_timeout seconds: answer 503, the sender retries. The rows may still
        commit after a timeout; the retry is then deduplicated by (source, message_id), so a
        503 never causes a duplicate and a 200 is never premature.
        (Not a coroutine: on the ingest hot path every coroutine level costs each request.)
        """

    async def record_reject(self, source: str, reason: str) -> None:
        """Count an ingest rejection with our description of it (never the raw input)."""

    async def rejects(self, source: str) -> list[str]: ...
    async def read_inbox(self, after_seq: int, limit: int) -> list[InboxRecord]: ...
    async def cursor(self, name: str) -> int: ...

    async def inbox_backlog(self, cursor_name: str) -> tuple[int, float | None]:
        """Inbox records after the cursor `cursor_name` (an upper bound: records forgotten
        meanwhile still count), and when the oldest of them was received (None: none)."""

    async def commit_processed(
        self, events: Sequence[ProcessedEvent], cursor_name: str, position: int,
        identity: IdentityChanges | None = None, now: float | None = None,
    ) -> None:
        """Write events, deliveries, identity changes and the cursor in one transaction.
        New deliveries are due at `now` (default: the current time)."""

    async def quality_summary(self, since: float = 0.0) -> list[QualitySummary]:
        """Match quality per destination and canonical event, over events received since."""

    async def load_identity(self, keys: Sequence[tuple[str, str]]) -> list[IdentityNode]:
        """The nodes with these (kind, value) keys and every node of their persons."""

    async def prune_identity(self, before: float, limit: int) -> int:
        """Delete up to `limit` identity nodes last seen before `before`; how many went."""

    async def forget(
        self, *, user_ids: Sequence[str] = (), anonymous_ids: Sequence[str] = (),
        email_hashes: Sequence[str] = (), emails: Sequence[str] = (),
    ) -> ForgetReport:
        """Erase a person: identity nodes, and stored events and raw inbox rows naming them."""

    async def check_writable(self) -> None:
        """Raise StoreUnavailable unless a write commits now."""

    async def counts(self) -> dict[str, int]: ...
    async def events_for(self, source: str, event_ids: Sequence[str]) -> list[StoredEvent]: ...
    async def inbox_message_ids(self, source: str) -> list[str]: ...
    async def deliveries_for(self, event_row: int) -> list[tuple[str, str]]: ...

    # -- delivery ---------------------------------------------------------------------------

    async def lease_deliveries(
        self, destination: str, now: float, limit: int, lease_secs: float
    ) -> list[LeasedDelivery]:
        """Take up to `limit` due deliveries (oldest due first) and mark them in_flight until
        now + lease_secs. An in_flight delivery whose lease ran out is due again (a crash
        mid-send re-sends it, with the same payload and event id)."""

    async def event_bodies(self, event_rows: Sequence[int]) -> dict[int, bytes]:
        """The stored canonical events (JSON) by row, for deliveries without a payload."""

    async def finish_deliveries(
        self, exchanges: Sequence[Exchange], updates: Sequence[DeliveryUpdate], now: float
    ) -> None:
        """Record requests and attempts and apply the new states, in one transaction."""

    async def release_leases(self, ids: Sequence[int], now: float) -> None:
        """Give leased deliveries back unsent (shutdown), due now."""

    async def next_due(self, destination: str) -> float | None:
        """When the earliest queued delivery of `destination` is due (None: none queued)."""

    async def queue_summary(self) -> dict[str, tuple[int, float | None]]:
        """Per destination: deliveries waiting to be sent, and when the oldest was created."""

    async def requeue(
        self, destination: str, statuses: Sequence[str], since: float | None, now: float,
        rebuild: bool = False, limit: int | None = None, force: bool = False,
    ) -> int:
        """Queue again (oldest first, at most `limit`) the deliveries of `destination` in
        `statuses` of events received since `since`; the retry horizon restarts. `rebuild`
        drops the stored payload so it is encoded again from the event with the current
        config. Unless `force`, a delivery whose event id the destination already accepted
        (the delivery ledger) is left alone. Returns how many."""

    async def count_deliveries(
        self, destination: str, statuses: Sequence[str], since: float | None = None,
        force: bool = False,
    ) -> int:
        """How many deliveries requeue() with the same arguments would take."""

    async def delivery_records(self, event_row: int) -> list[DeliveryRecord]:
        """Every delivery of a stored event with its full attempt history (the trace)."""

    # -- deduplication ----------------------------------------------------------------------

    async def dedup_seen(self, keys: Sequence[str]) -> dict[str, tuple[int, str, float]]:
        """The first claim of each known key: (event row, source, received at)."""

    async def delivered_event_ids(
        self, destination: str, event_ids: Sequence[str]
    ) -> dict[str, int]:
        """Of these event ids, those already delivered to `destination` (→ its event row):
        the delivery ledger."""

    async def prune_dedup(self, before: float, limit: int) -> int:
        """Delete up to `limit` dedup keys first seen before `before`; how many went."""

    async def dedup_overlaps(self, since: float = 0.0) -> list[Overlap]:
        """Duplicates per (first source, repeating source, canonical event), since `since`."""

    async def explicit_id_share(self, since: float = 0.0) -> list[ExplicitIdShare]:
        """Per source and canonical event: accepted events, and how many had an explicit
        event id (what pixel deduplication needs)."""

    async def inbox_record(self, seq: int) -> InboxRecord | None: ...
    async def stored_event(self, event_row: int) -> StoredEvent | None: ...

    # -- report (tracklayerd report; store/report_queries.py) ------------------------------
    # Windows are on events.received_at: since <= received_at < until (None: no end).

    async def report_tallies(
        self, since: float, until: float | None, destination: str | None = None
    ) -> list[ReportTally]:
        """Deliveries of the events received in the window, counted per destination,
        canonical event, delivery status, consent outcome and (delivered or observed ones)
        currency, with their value and match-quality sums."""

    async def report_event_tallies(self, since: float, until: float | None) -> list[EventTally]:
        """Events received in the window per canonical name and event status."""

    async def report_items(
        self, since: float, until: float | None, events: Sequence[str],
        destination: str | None = None,
    ) -> list[ReportItem]:
        """The stored events of these canonical names (case-insensitive) received in the
        window, once per delivery (of `destination` only, when given); an event without
        one comes once with destination None."""

    async def report_items_by_id(
        self, events: Sequence[str], order_ids: Sequence[str], event_ids: Sequence[str],
        destination: str | None = None,
    ) -> list[ReportItem]:
        """As report_items, in any window: the events with these order ids or event ids."""


    # -- status page --------------------------------------------------------------------------
    # Aggregates for /-/status (tracklayerd/web/status.py); all bounded (see
    # store/status_queries.py), so the page stays fast with millions of stored events.

    async def event_counts(self, since: float) -> list[EventCount]:
        """Events received since `since` per source, hour, status, name and explicit id."""

    async def reject_counts(self, sources: Sequence[str], since: float) -> list[RejectCount]:
        """Ingest rejects since `since` per source and hour; and for each of `sources` the
        reasons of its latest (up to 1,000) rejects."""

    async def delivery_counts(
        self, destinations: Sequence[str], since: float
    ) -> list[DeliveryCount]:
        """Deliveries of these destinations finished since `since`, per state and hour; and
        the queued ones now (hour None, with the oldest created_at)."""

    async def delivery_totals(self, destinations: Sequence[str]) -> list[DeliveryCount]:
        """All-time deliveries per destination and state (hour None)."""

    async def delivery_latencies(self, destination: str, since: float, limit: int) -> list[float]:
        """Seconds from processing to delivery of the latest `limit` deliveries since."""

    async def suppression_counts(
        self, destinations: Sequence[str], since: float
    ) -> list[SuppressionCount]:
        """Suppressed deliveries since `since`, per consent rule (None: the ledger)."""

    async def failed_request_counts(self, destination: str, since: float) -> list[tuple[int, int]]:
        """(hour, requests answered without 2xx or not at all) since `since`."""

    async def platform_errors(
        self, destination: str, since: float, limit: int
    ) -> list[PlatformAnswer]:
        """The latest requests since `since` that failed, with the platform's answer."""

    async def platform_warnings(
        self, destination: str, since: float, limit: int, scan: int
    ) -> list[PlatformAnswer]:
        """The latest accepted requests whose answer carries messages (among `scan`)."""

    async def last_request(self, destination: str) -> PlatformAnswer | None: ...

    async def dead_letters(self, destination: str, limit: int) -> list[DeadLetter]:
        """The latest dead letters of `destination`, newest first."""

    async def recent_events_since(self, limit: int, since: float) -> float:
        """The receive time of the `limit`-th latest event since `since` (else `since`)."""

    async def quality_sample(self, since: float) -> list[QualitySummary]:
        """As quality_summary, meant for a recent `since` (a sample): it reads from the
        events received since then outwards, however many deliveries are stored."""


# -- report ---------------------------------------------------------------------------------


class ReportTally(msgspec.Struct, frozen=True, kw_only=True):
    """One group of report_tallies()."""

    destination: str
    event: str
    status: str  # the delivery status
    consent: str | None  # the consent outcome if limited or suppressed, else None
    currency: str | None  # delivered and observed deliveries only (None: other, or unset)
    deliveries: int
    valued: int  # delivered and observed deliveries whose event has a value
    value: float  # the sum of those values
    scored: int  # deliveries with a match-quality score
    quality: float  # the sum of those scores


class EventTally(msgspec.Struct, frozen=True):
    event: str | None  # None: the record could not be decoded (status invalid)
    status: str  # accepted | dropped | invalid | duplicate
    events: int


class ReportItem(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event for a reconciliation, with one of its deliveries (or none)."""

    event_row: int
    event: str
    event_id: str
    status: str  # the event's: accepted | dropped | duplicate
    received_at: float
    order_id: str | None
    value: float | None
    currency: str | None
    destination: str | None  # None: the event has no delivery (for that destination)
    delivery: str | None  # the delivery's status
    consent: str | None  # the delivery's consent outcome


# -- status page ----------------------------------------------------------------------------


class EventCount(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    hour: int  # unix seconds at the start of the hour
    status: str  # accepted | dropped | invalid | duplicate
    name: str | None
    explicit: bool  # the sender set the event id
    count: int


class RejectCount(msgspec.Struct, frozen=True, kw_only=True):
    """Either an hour's rejects of a source (reason None), or one reason among the latest
    rejects of a source (hour None)."""

    source: str
    hour: int | None
    reason: str | None  # our description (never the raw input)
    count: int
    last_at: float | None


class DeliveryCount(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    status: str
    hour: int | None  # the hour it finished; None: queued now, or an all-time total
    count: int
    oldest: float | None = None  # queued: the oldest created_at


class SuppressionCount(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    rule: str | None  # the consent rule; None: suppressed by the delivery ledger
    count: int


class PlatformAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """One request to a platform as recorded: its answer verbatim (truncated)."""

    destination: str
    at: float
    http_status: int | None
    response: str | None
    error: str | None  # transport failure, when there was no answer


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    event_row: int
    at: float | None
    attempts: int
    reason: str | None
    source: str
    name: str | None
