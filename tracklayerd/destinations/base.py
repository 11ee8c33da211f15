"""The destination contract (docs/specs/destination.md): what every platform implements.

A destination turns canonical events into the platform's request and the platform's answer
into one outcome per event. It never retries, sleeps, touches the store or keeps globals:
the scheduler owns timing, and the store owns state.

Two pure steps build what is sent. :meth:`Destination.encode` turns one event into its
element of the platform's batch (bytes), or says why the platform would reject it; the
processor runs it once, when the event is processed, and stores the bytes with the delivery.
:meth:`Destination.build_request` wraps stored elements into one request. So what a preview
shows, what observe mode stores, what the trace shows and what is sent (first time, retry,
after a crash, on replay) are the same bytes with the same event id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import aiohttp
import msgspec

from tracklayerd.config import DestinationConfig
from tracklayerd.errors import DestinationError
from tracklayerd.events import Event
from tracklayerd.pipeline.consent import ConsentDecision

RESPONSE_CHARS = 65_536  # platform answers are kept verbatim up to this length (per-event results)


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """What the platform answered to one request (kept for the trace and status page)."""

    status: int
    body: str  # verbatim, truncated to RESPONSE_CHARS
    elapsed_ms: float
    retry_after_secs: float | None = None


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    reply: Reply | None = None


class RetryLater(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    after_secs: float | None = None  # the platform said when (Retry-After); else backoff
    reply: Reply | None = None


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """Permanent: the delivery becomes a dead letter with this reason (the platform's words).

    ``whole_batch`` means the platform refused the entire request, possibly because of one
    event in it (Meta: "if any event is invalid, we reject the entire batch"); the scheduler
    then splits the batch and resends the halves so that the good events still go through.
    """

    reason: str
    whole_batch: bool = False
    reply: Reply | None = None


Outcome = Delivered | RetryLater | Rejected


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    """What a destination may know about the deployment beyond its own config."""

    # Where national phone numbers are read when an event names no country
    # ([identity] default_region); None: such numbers are dropped, never guessed.
    default_region: str | None = None
    user_agent: str = "tracklayerd"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_events: int  # per request
    max_bytes: int | None = None  # request body
    # Events older or further in the future than this fail the whole request at the
    # platform; the scheduler dead-letters them before batching.
    max_age_secs: float | None = None
    max_future_secs: float | None = None


class Encoded(msgspec.Struct, kw_only=True):
    """One event as the platform takes it, or why it cannot be sent."""

    payload: bytes | None = None  # one element of the platform's batch (JSON)
    rejected: str | None = None  # set: the platform would refuse it; it is never sent
    # Set: the platform takes no such event (an identify for an ad platform): no delivery
    # is created at all, so such events never pile up as dead letters.
    skipped: str | None = None
    warnings: list[str] = []  # sent anyway, but worth a look (dropped identifiers, ...)


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP request to the platform. ``url`` may carry credentials: never show it."""

    url: str
    body: bytes
    headers: dict[str, str] = {}
    method: str = "POST"


class Destination(Protocol):
    id: str
    config: DestinationConfig
    limits: Limits

    def encode(self, event: Event, consent: ConsentDecision | None = None) -> Encoded:
        """Pure: the event as one element of this platform's batch. `consent` is the consent
        decision for this destination (limited data use, Google's signals); None: none made
        (preview of a bare event, tests)."""

    def build_request(self, payloads: Sequence[bytes]) -> Request:
        """Pure: the request carrying these encoded events (at most limits.max_events)."""

    async def send(self, payloads: Sequence[bytes]) -> Sequence[Outcome]:
        """Send one request; exactly one outcome per payload, in order. Raises only when
        the request failed in transport (connection, timeout): the scheduler retries all."""

    async def healthcheck(self) -> None:
        """Raise DestinationError with actionable text when the destination cannot work."""

    async def close(self) -> None:
        """Release connections."""


def build_payload(destination: Destination, events: Sequence[Event]) -> tuple[Request, list[str]]:
    """The request for these events as it would be sent, and the reasons any were left out.

    Used by ``tracklayerd preview`` and tests; the scheduler sends stored encodings instead.
    """
    payloads: list[bytes] = []
    problems: list[str] = []
    for event in events:
        encoded = destination.encode(event, None)
        if encoded.payload is None:
            problems.append(encoded.rejected or encoded.skipped or "cannot be encoded")
        else:
            payloads.append(encoded.payload)
    return destination.build_request(payloads), problems


class TransportError(DestinationError):
    """The request did not complete (connection refused or reset, timeout)."""


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpClient:
    """One connection pool per destination, sized to its concurrency, so a slow platform
    never holds connections another destination needs (aiohttp's pool is not a fair queue:
    the scheduler never has more requests in flight than the pool has connections)."""

    def __init__(self, *, concurrency: int, timeout_secs: float, user_agent: str) -> None:
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_secs)
        self._headers = {"User-Agent": user_agent}
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300),
                timeout=self._timeout, headers=self._headers, raise_for_status=False,
            )
        return self._session

    async def send(self, request: Request) -> Reply:
        """The platform's reply, whatever its status; TransportError when there is none."""
        started = time.perf_counter()
        try:
            async with self._get().request(
                request.method, request.url, data=request.body, headers=request.headers
            ) as response:
                raw = await response.read()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                status = response.status
        except TimeoutError:
            raise TransportError("no answer within the timeout") from None
        except aiohttp.ClientError as exc:
            # The message of a connection error can carry the URL (and its credentials).
            raise TransportError(f"connection failed ({type(exc).__name__})") from None
        return Reply(
            status=status, body=raw[:RESPONSE_CHARS].decode("utf-8", "replace"),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
            retry_after_secs=retry_after,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# Answers that say the destination's config is wrong (credentials, URL), not the events: the
# events wait while the destination pauses, instead of all becoming dead letters.
CONFIG_STATUSES = {401: "credentials refused", 403: "access forbidden",
                   404: "endpoint not found", 407: "proxy credentials refused"}
CONFIG_PAUSE_SECS = 300.0


def outcome_for_status(reply: Reply, reason: str) -> Outcome:
    """The generic HTTP reading: 2xx delivered; 408, 425, 429 and 5xx retried (honouring
    Retry-After); 401, 403, 404 and 407 pause the destination (a config problem: check the
    credentials and endpoint); any other 4xx rejected as a batch. Platforms with error codes
    in their bodies map those first and fall back to this."""
    if 200 <= reply.status < 300:
        return Delivered(reply=reply)
    if reply.status in (408, 425, 429) or reply.status >= 500:
        return RetryLater(reason=reason, after_secs=reply.retry_after_secs, reply=reply)
    if (problem := CONFIG_STATUSES.get(reply.status)) is not None:
        return RetryLater(reason=f"{problem}: check the destination's credentials and "
                                 f"endpoint. {reason}", after_secs=CONFIG_PAUSE_SECS, reply=reply)
    return Rejected(reason=reason, whole_batch=True, reply=reply)


def same_outcome(outcome: Outcome, count: int) -> list[Outcome]:
    return [outcome] * count
