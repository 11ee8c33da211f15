"""Signed webhook destination (``type = "webhook"``): canonical events as JSON to an endpoint
you own; docs/destinations/webhook.md is the receiver's side of this contract.

One request is ``{"events": [<canonical event>, ...]}``. Its body depends only on the stored
payloads, so a retry of the same batch is byte-identical and carries the same
``Idempotency-Key``. The signature covers a timestamp taken at send time, so it is added in
:meth:`Webhook.send`; previews and observe mode show everything else exactly as sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from tracklayerd.config import DestinationConfig
from tracklayerd.destinations.base import (
    Delivered,
    Encoded,
    Environment,
    HttpClient,
    Limits,
    Outcome,
    Rejected,
    Reply,
    Request,
    RetryLater,
    outcome_for_status,
    same_outcome,
)
from tracklayerd.errors import DestinationError
from tracklayerd.events import Event, event_encoder
from tracklayerd.pipeline.consent import ConsentDecision
from tracklayerd.secrets import Secret

if TYPE_CHECKING:
    from tracklayerd.destinations.registry import Registry

DEFAULT_MAX_EVENTS = 100
# The receiver is the operator's own code: a cap keeps a request (about 1-2 KB per event)
# under the body limits common web frameworks and gateways default to.
MAX_EVENTS = 1000

TIMESTAMP_HEADER = "X-Tracklayerd-Timestamp"
SIGNATURE_HEADER = "X-Tracklayerd-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Headers tracklayerd sets itself: a configured one would break framing or the receiver's
# checks (the signature, the idempotency key).
RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "content-encoding", "transfer-encoding", "host",
    "connection", IDEMPOTENCY_HEADER.lower(),
})
RESERVED_PREFIX = "x-tracklayerd-"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
# Reasons are stored with every attempt and shown on the status page: keep them short.
REASON_CHARS = 500


class WebhookConfig(DestinationConfig, kw_only=True):
    # The URL events are POSTed to. It may carry credentials: never put it in reasons or logs.
    endpoint: Annotated[str, Meta(pattern=r"^https?://\S+$")]
    # HMAC-SHA256 key for the X-Tracklayerd-Signature header.
    secret: Secret | None = None
    max_batch_events: Annotated[int, Meta(ge=1, le=MAX_EVENTS)] | None = None
    # Extra headers sent with every request; shown as configured (`check --show`, previews).
    headers: dict[str, str] = {}
    # Extra headers whose values are secrets (an API gateway's key, a bearer token): added
    # only when sending, so previews and traces never contain them.
    secret_headers: dict[str, Secret] = {}

    def __post_init__(self) -> None:
        if not urlsplit(self.endpoint).hostname:
            raise ValueError("endpoint has no host")
        seen: set[str] = set()
        for option, names in (("headers", self.headers), ("secret_headers", self.secret_headers)):
            for name in names:
                lower = name.lower()
                if not _TOKEN.match(name):
                    raise ValueError(f"{option}: {name!r} is not a valid header name")
                if lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIX):
                    raise ValueError(f"{option}: {name} is set by tracklayerd itself")
                if lower in seen:
                    raise ValueError(f"{option}: {name} is set twice")
                seen.add(lower)
        values = [*self.headers.values(), *(s.reveal() for s in self.secret_headers.values())]
        # A line break in a value would let it smuggle headers of its own.
        if any(ch in value for value in values for ch in "\r\n\0"):
            raise ValueError("headers: values cannot contain line breaks")


class _Result(msgspec.Struct):
    status: Literal["ok", "retry", "rejected"]
    reason: str | None = None


class _Results(msgspec.Struct):
    """The receiver's optional per-event answer (docs/destinations/webhook.md)."""

    results: list[_Result]


_results_decoder = msgspec.json.Decoder(_Results)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Tracklayerd-Signature value: HMAC-SHA256 over ``<timestamp>.<body>``."""
    digest = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def idempotency_key(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


class Webhook:
    """POSTs batches of canonical events, signed, to the operator's own endpoint."""

    def __init__(self, destination_id: str, config: WebhookConfig, environment: Environment):
        self.id = destination_id
        # The protocol's attribute is the base type; _config keeps the precise one.
        self.config: DestinationConfig = config
        self._config = config
        self.limits = Limits(max_events=config.max_batch_events or DEFAULT_MAX_EVENTS)
        self._secret = None if config.secret is None else config.secret.reveal().encode()
        self._http = HttpClient(concurrency=config.concurrency, timeout_secs=config.timeout_secs,
                                user_agent=environment.user_agent)

    def encode(self, event: Event, consent: ConsentDecision | None = None) -> Encoded:
        # Sent as stored, personal data included: the receiver is the operator's own system.
        return Encoded(payload=event_encoder.encode(event))

    def build_request(self, payloads: Sequence[bytes]) -> Request:
        body = b'{"events":[' + b",".join(payloads) + b"]}"
        headers = {**self._config.headers, "Content-Type": "application/json",
                   IDEMPOTENCY_HEADER: idempotency_key(body)}
        return Request(url=self._config.endpoint, body=body, headers=headers)

    def signed(self, request: Request, now: float) -> Request:
        """The request as sent at `now`: timestamped, signed, with the secret headers."""
        timestamp = int(now)
        headers = {**request.headers, TIMESTAMP_HEADER: str(timestamp)}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, request.body)
        for name, value in self._config.secret_headers.items():
            headers[name] = value.reveal()
        return Request(url=request.url, body=request.body, headers=headers,
                       method=request.method)

    async def send(self, payloads: Sequence[bytes]) -> Sequence[Outcome]:
        request = self.signed(self.build_request(payloads), time.time())
        reply = await self._http.send(request)
        per_event = _per_event(reply, len(payloads))
        if per_event is not None:
            return per_event
        return same_outcome(outcome_for_status(reply, _status_reason(reply)), len(payloads))

    async def healthcheck(self) -> None:
        parts = urlsplit(self._config.endpoint)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            # Never the URL itself: it may carry credentials.
            raise DestinationError(f"destination {self.id}: endpoint must be an http:// or "
                                   "https:// URL with a host")

    async def close(self) -> None:
        await self._http.close()


def _per_event(reply: Reply, count: int) -> list[Outcome] | None:
    """The receiver's per-event results, when it gave exactly one per event on a status
    that can carry them (2xx, 400, 422); otherwise None and the status code decides."""
    if not (200 <= reply.status < 300 or reply.status in (400, 422)):
        return None
    if '"results"' not in reply.body:
        return None
    try:
        results = _results_decoder.decode(reply.body).results
    except msgspec.DecodeError:  # not the protocol, or cut at RESPONSE_CHARS
        return None
    if len(results) != count:
        return None
    outcomes: list[Outcome] = []
    for result in results:
        reason = (result.reason or "").strip()[:REASON_CHARS]
        if result.status == "ok":
            outcomes.append(Delivered(reply=reply))
        elif result.status == "retry":
            outcomes.append(RetryLater(reason=reason or "the receiver asked to retry this event",
                                       after_secs=reply.retry_after_secs, reply=reply))
        else:
            outcomes.append(Rejected(reason=reason or "rejected by the receiver", reply=reply))
    return outcomes


def _status_reason(reply: Reply) -> str:
    said = " ".join(reply.body.split())[:REASON_CHARS]
    return f"HTTP {reply.status}: {said}" if said else f"HTTP {reply.status}"


def register(registry: Registry) -> None:
    registry.register("webhook", WebhookConfig, factory=Webhook)
