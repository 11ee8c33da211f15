"""Receivers for Segment's and RudderStack's webhook destinations: ``POST /ingest/<source id>``.

For teams that keep Segment or RudderStack and add tracklayerd as one more destination. The
body is one event, a JSON array of events, or ``{"batch": [...]}``; every event follows the
Segment spec and is stored like a Tracking API message.

Segment signs with HMAC-SHA1 of the shared secret (docs/sources/segment.md):
``X-Segment-Signature`` covers the whole body; the legacy ``X-Signature`` covers the body of a
single event, or only the first event of a batch. Both are checked in constant time. A
configured ``Authorization`` value is accepted instead, and is the recommended setup for
batches because re-serialising the first event can differ from JavaScript's.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping

import msgspec
from aiohttp import web

from tracklayerd.config import RudderstackWebhookSource, SegmentWebhookSource
from tracklayerd.ingest.common import (
    ClientAddress,
    error_response,
    note_reject,
    read_body_or_answer,
)
from tracklayerd.ingest.segment import commit_prepared
from tracklayerd.ingest.segment_messages import BatchFields, prepare
from tracklayerd.metrics import Metrics, counted_ingest, note_source
from tracklayerd.secrets import Secret, as_bytes
from tracklayerd.store.base import Store

log = logging.getLogger("tracklayerd.ingest")

# Segment gives a webhook 5 s; answer (503, so it retries) before it gives up on us.
SEGMENT_DEADLINE_SECS = 4.0

WebhookSource = SegmentWebhookSource | RudderstackWebhookSource


class _Wrapped(msgspec.Struct):
    batch: list[msgspec.Raw] | None = None


_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_wrapped_decoder = msgspec.json.Decoder(_Wrapped)


def split_events(body: bytes) -> list[msgspec.Raw]:
    """One event, an array, or {"batch": [...]} → the events' raw bytes."""
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        return _list_decoder.decode(body)
    wrapped = _wrapped_decoder.decode(body)
    if wrapped.batch is not None:
        return wrapped.batch
    return [msgspec.Raw(body)]


def _hmac_sha1(secret: Secret, data: bytes) -> bytes:
    return hmac.new(secret.reveal().encode(), data, hashlib.sha1).hexdigest().encode()


def segment_signature_ok(
    secret: Secret, body: bytes, events: list[msgspec.Raw], headers: Mapping[str, str]
) -> bool:
    whole = headers.get("X-Segment-Signature")
    if whole:
        return hmac.compare_digest(as_bytes(whole.strip().lower()), _hmac_sha1(secret, body))
    legacy = headers.get("X-Signature")
    if not legacy:
        return False
    candidates = [body]
    if body.lstrip().startswith(b"[") and events:
        first = bytes(events[0])
        candidates.append(first)  # JSON.stringify(array) embeds JSON.stringify(array[0])
        with contextlib.suppress(ValueError):
            candidates.append(json.dumps(json.loads(first), separators=(",", ":"),
                                         ensure_ascii=False).encode())
    presented = as_bytes(legacy.strip().lower())
    matched = False
    for candidate in candidates:  # check all: the time taken does not say which matched
        matched |= hmac.compare_digest(presented, _hmac_sha1(secret, candidate))
    return matched


class WebhookIngest:
    def __init__(
        self,
        sources: dict[str, WebhookSource],
        store: Store,
        *,
        commit_timeout_secs: float,
        client_address: ClientAddress,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._sources = sources
        self._store = store
        self._timeout = commit_timeout_secs
        self._client_address = client_address

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/ingest/{source_id}", counted_ingest(self._metrics, self.handle))]

    async def handle(self, request: web.Request) -> web.Response:
        received_at = time.time()
        source_id = request.match_info["source_id"]
        source = self._sources.get(source_id)
        if source is None:
            return error_response(404, "not_found", f"no webhook source {source_id!r}")
        note_source(request, source_id)
        # An unreadable body is not counted: the sender is not authenticated yet.
        body = await read_body_or_answer(request, source.max_request_bytes)
        if isinstance(body, web.Response):
            return body
        try:
            events = split_events(body)
        except msgspec.ValidationError as exc:  # before DecodeError, its base class
            events = None
            problem = f"expected an event, an array of events or {{\"batch\": [...]}}: {exc}"
        except msgspec.DecodeError as exc:
            events = None
            problem = f"malformed JSON: {exc}"
        if not self._authorized(source, body, events or [], request):
            log.warning("webhook source %s: refused a request with a missing or bad "
                        "signature or authorization", source_id)
            return error_response(401, "unauthorized",
                                  "missing or invalid signature or authorization")
        if events is None:
            await note_reject(self._store, source_id, f"invalid_request: {problem}")
            return error_response(400, "invalid_request", problem)
        if len(events) > source.max_batch_events:
            return error_response(413, "too_large", f"{len(events)} events; the limit is "
                                            f"{source.max_batch_events}")
        origin = ("segment_webhook" if isinstance(source, SegmentWebhookSource)
                  else "rudderstack_webhook")
        prepared = prepare(
            events, BatchFields(origin=origin), source_id=source_id, received_at=received_at,
            request_ip=self._client_address(request), max_event_bytes=source.max_event_bytes,
        )
        timeout = self._timeout
        if isinstance(source, SegmentWebhookSource):
            timeout = min(timeout, SEGMENT_DEADLINE_SECS)
        return await commit_prepared(self._store, source_id, prepared, timeout)

    def _authorized(
        self, source: WebhookSource, body: bytes, events: list[msgspec.Raw],
        request: web.Request,
    ) -> bool:
        if not source.authenticated:
            return True  # dev mirror: loopback only, enforced at startup
        if isinstance(source, RudderstackWebhookSource):
            presented = request.headers.get(source.header)
            return presented is not None and source.secret is not None and (
                source.secret.matches(presented))
        authorization = request.headers.get("Authorization")
        if source.authorization is not None and authorization is not None and (
                source.authorization.matches(authorization)):
            return True
        if source.shared_secret is None:
            return False
        return segment_signature_ok(source.shared_secret, body, events, request.headers)
