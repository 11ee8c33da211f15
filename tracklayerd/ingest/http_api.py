"""The native ingest API: ``POST /v1/events`` with one event or ``{"events": [...]}``.

Answers (docs/api.md):

* 200 ``{"success": true, "accepted": n, "duplicates": d}`` once every accepted event is
  committed. A retried event (same ``event_id``) is stored once and still counted as accepted.
* Partial batches: the valid events are committed and the invalid ones are listed under
  ``"rejected"`` with their index, JSON path and problem; the status is 200 if at least one
  event was valid, else 400. Limits apply to the whole request: any breach is 413.
* 400 for a body that can never be valid, 401 for a missing or wrong token,
  503 + Retry-After when the store cannot commit (the sender should retry).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from tracklayerd.config import HttpApiSource
from tracklayerd.errors import StoreUnavailable
from tracklayerd.events import NativeBatch, NativeEvent, derived_event_id, native_decoder
from tracklayerd.ingest.common import (
    ClientAddress,
    KeyRing,
    error_response,
    json_response,
    note_reject,
    read_body_or_answer,
    unavailable,
    validation_problem,
)
from tracklayerd.metrics import note_source
from tracklayerd.store.base import InboxRow, Store

KIND = "native"
ONE_NEW = msgspec.json.encode({"success": True, "accepted": 1, "duplicates": 0})
ONE_DUPLICATE = msgspec.json.encode({"success": True, "accepted": 1, "duplicates": 1})


class _Probe(msgspec.Struct):
    """Tells a batch from a single event without decoding the events."""

    events: list[msgspec.Raw] | None = None


_probe_decoder = msgspec.json.Decoder(_Probe)
_batch_decoder = msgspec.json.Decoder(NativeBatch)


class NativeIngest:
    def __init__(
        self,
        sources: dict[str, HttpApiSource],
        store: Store,
        *,
        commit_timeout_secs: float,
        client_address: ClientAddress,
    ) -> None:
        self._sources = sources
        self._keys = KeyRing({sid: src.token for sid, src in sources.items()})
        self._store = store
        self._timeout = commit_timeout_secs
        self._client_address = client_address

    async def handle(self, request: web.Request) -> web.Response:
        source_id = self._keys.source_for(_bearer(request))
        note_source(request, source_id)
        if source_id is None:
            response = error_response(401, "unauthorized", "missing or unknown bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="tracklayerd"'
            return response
        source = self._sources[source_id]
        received_at = time.time()
        body = await read_body_or_answer(request, source.max_request_bytes)
        if isinstance(body, web.Response):
            return body
        # Most requests are one valid event: decode it as one first (a batch fails fast, on
        # its unknown top-level "events" key) and look closer only when that fails.
        # Errors are kept as (path, message), never as exceptions: an exception held in a
        # local refers to this frame through its traceback, a cycle that kept each batch's
        # request and body alive until the garbage collector's next full pass.
        try:
            event = native_decoder.decode(body)
        except msgspec.ValidationError as exc:
            single_problem = validation_problem(exc)
        except msgspec.DecodeError as exc:
            return await self._reject(source_id, "malformed_json", f"malformed JSON: {exc}")
        else:
            if len(body) > source.max_event_bytes:
                return _too_big_event(len(body), source.max_event_bytes)
            row = self._row(source_id, event, body, received_at, self._client_address(request))
            return await self._commit([row], rejected=[])
        # Then as a batch (strict: no other top-level keys), and only when that fails too,
        # find out which of the two the sender meant, to name the right problem.
        try:
            batch = _batch_decoder.decode(body)
        except msgspec.ValidationError as exc:
            batch_problem = validation_problem(exc)
        except msgspec.DecodeError as exc:  # invalid, and malformed further on
            return await self._reject(source_id, "malformed_json", f"malformed JSON: {exc}")
        else:
            return await self._batch(source_id, source, batch.events, received_at, request)
        try:
            probe = _probe_decoder.decode(body)
        except msgspec.ValidationError:
            probe = _Probe()  # not an object with an "events" list: a bad single event
        except msgspec.DecodeError as exc:  # invalid, and malformed further on
            return await self._reject(source_id, "malformed_json", f"malformed JSON: {exc}")
        if probe.events is None:
            if len(body) > source.max_event_bytes:
                return _too_big_event(len(body), source.max_event_bytes)
            path, message = single_problem
            return await self._reject(source_id, "invalid_event", message, path=path)
        path, message = batch_problem
        return await self._reject(source_id, "invalid_request", message, path=path)

    async def _batch(
        self, source_id: str, source: HttpApiSource, raws: list[msgspec.Raw],
        received_at: float, request: web.Request,
    ) -> web.Response:
        if not raws:
            return error_response(400, "invalid_request", "events is empty", path="$.events")
        if len(raws) > source.max_batch_events:
            return error_response(
                413, "too_large",
                f"batch has {len(raws)} events; the limit is {source.max_batch_events}",
            )
        for index, raw in enumerate(raws):
            if len(raw) > source.max_event_bytes:
                return _too_big_event(len(raw), source.max_event_bytes, f"$.events[{index}]")
        rows: list[InboxRow] = []
        rejected: list[dict[str, Any]] = []
        request_ip = self._client_address(request)
        for index, raw in enumerate(raws):
            raw_bytes = bytes(raw)
            try:
                event = native_decoder.decode(raw_bytes)
            except msgspec.ValidationError as exc:
                path, message = validation_problem(exc, f"$.events[{index}]")
                rejected.append({"index": index, "path": path, "message": message})
                continue
            rows.append(self._row(source_id, event, raw_bytes, received_at, request_ip))
        if rejected:
            details = "; ".join(f"{r['path']}: {r['message']}" for r in rejected[:5])
            await note_reject(
                self._store, source_id, f"invalid_event: {len(rejected)} in a batch: {details}"
            )
        if not rows:
            return json_response(
                400,
                {"success": False, "error": "invalid_request", "code": "invalid_request",
                 "message": "no valid events in the batch", "rejected": rejected},
            )
        return await self._commit(rows, rejected)

    def _row(
        self, source_id: str, event: NativeEvent, raw: bytes, received_at: float,
        request_ip: str | None,
    ) -> InboxRow:
        return InboxRow(
            source=source_id,
            message_id=event.event_id or derived_event_id(raw),
            kind=KIND,
            received_at=received_at,
            payload=raw,
            request_ip=request_ip,
        )

    async def _commit(self, rows: list[InboxRow], rejected: list[dict[str, Any]]) -> web.Response:
        try:
            inserted = await self._store.append_inbox(rows, commit_timeout=self._timeout)
        except StoreUnavailable as exc:
            return unavailable(exc)
        if len(rows) == 1 and not rejected:
            return web.Response(body=ONE_NEW if inserted else ONE_DUPLICATE,
                                content_type="application/json")
        answer: dict[str, Any] = {
            "success": True, "accepted": len(rows), "duplicates": len(rows) - inserted,
        }
        if rejected:
            answer["rejected"] = rejected
        return json_response(200, answer)

    async def _reject(
        self, source_id: str, code: str, message: str, path: str | None = None
    ) -> web.Response:
        reason = f"{code}: {path}: {message}" if path else f"{code}: {message}"
        await note_reject(self._store, source_id, reason)
        return error_response(400, code, message, path=path)




def _too_big_event(size: int, limit: int, path: str | None = None) -> web.Response:
    message = f"event is {size} bytes; the limit is {limit}"
    return error_response(413, "too_large", message, path=path)


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


