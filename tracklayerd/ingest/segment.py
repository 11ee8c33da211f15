"""The Segment HTTP Tracking API, so unmodified Segment and RudderStack SDKs can send here.

Paths: ``POST /v1/{track,identify,page,screen,group,alias,batch}`` and analytics.js' short
paths ``/v1/{t,i,p,s,g,a,b}``. The write key comes from the body's ``writeKey``, HTTP Basic
(username), ``X-Write-Key`` or ``?writeKey=``, in that order. Any content type is parsed as
JSON (analytics.js sends text/plain); gzip bodies are decompressed within the size limit.

Answers (docs/sources/segment.md): exactly ``200 {"success": true}`` after the commit (the
SDKs treat any other 2xx as a failure and resend); ``400 {"success": false, "code":
"invalid_request", "message": ...}`` only for input that can never be valid; 401 for an
unknown write key; 413 over a limit; 503 + Retry-After when the store cannot commit. In a
batch, messages that can never be valid are recorded as rejects and the rest accepted.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from tracklayerd.config import SegmentSource
from tracklayerd.errors import StoreUnavailable
from tracklayerd.ingest.common import (
    ClientAddress,
    KeyRing,
    TooLarge,
    UnreadableBody,
    basic_username,
    error_response,
    note_reject,
    read_body,
    unavailable,
)
from tracklayerd.ingest.segment_messages import BatchFields, Prepared, prepare
from tracklayerd.metrics import Metrics, counted_ingest, note_source
from tracklayerd.segment_wire import SHORT_PATHS, BatchProbe, batch_probe_decoder
from tracklayerd.store.base import Store

SUCCESS = msgspec.json.encode({"success": True})
ORIGIN = "tracking_api"
PATHS = ["track", "identify", "page", "screen", "group", "alias", "batch", *SHORT_PATHS]
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Write-Key, X-Retry-Count"


class _SingleProbe(msgspec.Struct):
    writeKey: Any = None  # Segment's camelCase wire name


_single_probe_decoder = msgspec.json.Decoder(_SingleProbe)


class SegmentIngest:
    def __init__(
        self,
        sources: dict[str, SegmentSource],
        store: Store,
        *,
        commit_timeout_secs: float,
        client_address: ClientAddress,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._sources = sources
        self._keys = KeyRing({sid: src.write_key for sid, src in sources.items()})
        self._store = store
        self._timeout = commit_timeout_secs
        self._client_address = client_address
        self._max_request = max(s.max_request_bytes for s in sources.values())
        self._origins = {o for s in sources.values() for o in s.cors_origins}

    def routes(self) -> list[web.RouteDef]:
        routes = []
        for path in PATHS:
            routes.append(web.post(f"/v1/{path}", counted_ingest(self._metrics, self.handle)))
            if self._origins:
                routes.append(web.options(f"/v1/{path}", self.preflight))
        return routes

    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=403)
        # Browser SDKs add their own headers (RudderStack's AnonymousId, ...): an allowed
        # origin may send whatever it asks for.
        requested = request.headers.get("Access-Control-Request-Headers")
        headers.update({
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": requested or CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": "86400",
        })
        return web.Response(status=204, headers=headers)

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not self._origins:
            return {}
        if "*" in self._origins or origin in self._origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        response.headers.update(self._cors(request))
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        received_at = time.time()
        kind = request.match_info.get("kind") or request.path.rsplit("/", 1)[-1]
        kind = SHORT_PATHS.get(kind, kind)
        header_key = (basic_username(request) or request.headers.get("X-Write-Key")
                      or request.query.get("writeKey"))
        note_source(request, self._keys.source_for(header_key))  # until the body names one
        try:
            body = await read_body(request, self._max_request)
        except TooLarge as exc:
            return error_response(413, "too_large", str(exc))
        except UnreadableBody as exc:
            return await self._invalid(header_key, str(exc))

        try:
            if kind == "batch":
                envelope = batch_probe_decoder.decode(body)
                body_key = envelope.writeKey
            else:
                envelope = BatchProbe()
                single = _single_probe_decoder.decode(body)
                body_key = single.writeKey if isinstance(single.writeKey, str) else None
        except msgspec.ValidationError as exc:  # before DecodeError, its base class
            return await self._invalid(header_key, f"invalid body: {exc}")
        except msgspec.DecodeError as exc:
            return await self._invalid(header_key, f"malformed JSON: {exc}")

        source_id = self._keys.source_for(body_key or header_key)
        note_source(request, source_id)
        if source_id is None:
            return error_response(401, "unauthorized", "missing or unknown write key")
        source = self._sources[source_id]
        if len(body) > source.max_request_bytes:
            return error_response(413, "too_large", f"request body is {len(body)} bytes; "
                                            f"the limit is {source.max_request_bytes}")

        if kind == "batch":
            if envelope.batch is None:
                return await self._invalid(source_id, "a batch needs a `batch` list",
                                           known=True)
            if len(envelope.batch) > source.max_batch_events:
                return error_response(413, "too_large",
                                      f"batch has {len(envelope.batch)} messages; "
                                      f"the limit is {source.max_batch_events}")
            raws: list[msgspec.Raw] | list[bytes] = envelope.batch
        else:
            if len(body) > source.max_event_bytes:
                return error_response(413, "too_large", f"message is {len(body)} bytes; "
                                                f"the limit is {source.max_event_bytes}")
            raws = [body]
        prepared = prepare(
            raws,
            BatchFields(origin=ORIGIN, type_hint=None if kind == "batch" else kind,
                        context=envelope.context, integrations=envelope.integrations,
                        sent_at=envelope.sentAt,
                        user_agent=request.headers.get("User-Agent", "")[:2048] or None),
            source_id=source_id, received_at=received_at,
            request_ip=self._client_address(request), max_event_bytes=source.max_event_bytes,
        )
        return await commit_prepared(self._store, source_id, prepared, self._timeout)


    async def _invalid(
        self, key_or_source: str | None, message: str, *, known: bool = False
    ) -> web.Response:
        """400 for a body that can never be valid, counted for its source when known."""
        source_id = key_or_source if known else self._keys.source_for(key_or_source)
        if source_id is not None:
            await note_reject(self._store, source_id, f"invalid_request: {message}")
        return error_response(400, "invalid_request", message)


async def commit_prepared(
    store: Store, source_id: str, prepared: Prepared, timeout_secs: float
) -> web.Response:
    """Record rejects, commit the rows, answer the way Segment's clients expect."""
    if prepared.rejected:
        details = "; ".join(f"[{i}] {reason}" for i, reason in prepared.rejected[:5])
        await note_reject(
            store, source_id, f"invalid_message: {len(prepared.rejected)} refused: {details}"
        )
    if not prepared.rows:
        index, reason = prepared.rejected[0] if prepared.rejected else (0, "no messages")
        return error_response(400, "invalid_request", reason if len(prepared.rejected) <= 1
                      else f"no valid messages; [{index}] {reason}")
    try:
        await store.append_inbox(prepared.rows, commit_timeout=timeout_secs)
    except StoreUnavailable as exc:
        return unavailable(exc)
    return web.Response(status=200, body=SUCCESS, content_type="application/json")
